# On a SLURM cluster (--executor slurm, e.g. --profile profiles/slurm):
# - the partition file: profiles/slurm/partitions.yaml is handed to the plugin as an absolute path
#   (SNAKEMAKE_SLURM_PARTITIONS, unless already set; a slurm-partition-config option wins over it).
#   A relative slurm-partition-config in a profile is resolved against the directory Snakemake was
#   started in, and the plugin opens it after --directory changed into the working directory
#   ("Partition file not found"): that is why profiles/slurm does not set it.
# - before the first submission (onstart), every job to be submitted must fit a node of some
#   partition, within its time limit (featdyn.cluster, from sinfo): SLURM accepts a job larger than
#   every node, or longer than the partition allows, and keeps it pending for good
#   (Reason=PartitionConfig, PartitionTimeLimit), while Snakemake waits without a word. A job of a
#   group (the profile's analysis group) is checked as the group job that is really submitted.
# Main process only: the jobs' own Snakemake (--executor slurm-jobstep, --no-hooks) skips all of this.
from featdyn import cluster as fdcluster

# (set for the plugin, not read by the workflow: hence no `envvars:`)
PARTITIONS_VARIABLE = "SNAKEMAKE_SLURM_PARTITIONS"
if workflow.is_main_process:
    os.environ.setdefault(PARTITIONS_VARIABLE, os.path.join(REPO, "profiles", "slurm", "partitions.yaml"))


def cluster_needs(jobs):
    """What each submission asks for: the distinct requests of each rule's jobs. A job that goes in a
    group job (profiles/slurm: groups) is submitted as that group job, which asks for what its jobs
    running side by side need together (Snakemake's group resources): each job may fit a node while
    the group job does not."""
    needs, groups = {}, set()
    for job in jobs:
        if job.is_local:
            continue
        unit, name = job, job.rule.name
        group = workflow.dag.get_job_group(job)
        if group is not None:
            if id(group) in groups:  # one request per group job, whichever of its jobs comes first
                continue
            groups.add(id(group))
            unit, name = group, f"{group.groupid} group job ({', '.join(sorted(group.rules))})"
        res = unit.resources
        mem = res.get("mem_mb")
        runtime = res.get("runtime")
        need = fdcluster.Need(
            name,
            unit.threads,
            mem if isinstance(mem, int) else None,
            int(res.get("gpu", 0) or 0),
            runtime if isinstance(runtime, int) else None,
        )
        needs[need] = None  # every distinct request: one job may ask for more threads, another more memory
    return list(needs)


def check_cluster_fit():
    plugin = workflow.executor_plugin
    if plugin is None or getattr(plugin, "name", None) != "slurm":
        return
    try:
        fdcluster.check_fit(cluster_needs(workflow.dag.needrun_jobs()), fdcluster.query_partitions())
    except FeatdynError as exc:
        raise WorkflowError(str(exc)) from None


onstart:
    check_cluster_fit()

# On a SLURM cluster (--executor slurm, e.g. --profile profiles/slurm):
# - the partition file: profiles/slurm/partitions.yaml is handed to the plugin as an absolute path
#   (SNAKEMAKE_SLURM_PARTITIONS, unless already set; a slurm-partition-config option wins over it).
#   A relative slurm-partition-config in a profile is resolved against the directory Snakemake was
#   started in, and the plugin opens it after --directory changed into the working directory
#   ("Partition file not found"): that is why profiles/slurm does not set it.
# - before the first submission (onstart), every job to be submitted must fit a node of some
#   partition (featdyn.cluster, from sinfo): SLURM accepts a job larger than every node and keeps
#   it pending for good (Reason=PartitionConfig), while Snakemake waits without a word.
# Main process only: the jobs' own Snakemake (--executor slurm-jobstep, --no-hooks) skips all of this.
from featdyn import cluster as fdcluster

# (set for the plugin, not read by the workflow: hence no `envvars:`)
PARTITIONS_VARIABLE = "SNAKEMAKE_SLURM_PARTITIONS"
if workflow.is_main_process:
    os.environ.setdefault(PARTITIONS_VARIABLE, os.path.join(REPO, "profiles", "slurm", "partitions.yaml"))


def cluster_needs(jobs):
    """What each job to be submitted asks for, per rule (the largest job of each rule)."""
    needs = {}
    for job in jobs:
        if job.is_local:
            continue
        res = job.resources
        mem = res.get("mem_mb")
        need = fdcluster.Need(
            job.rule.name, job.threads, mem if isinstance(mem, int) else None, int(res.get("gpu", 0) or 0)
        )
        old = needs.get(job.rule.name)
        if old is None or (need.threads, need.mem_mb or 0, need.gpus) > (old.threads, old.mem_mb or 0, old.gpus):
            needs[job.rule.name] = need
    return list(needs.values())


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

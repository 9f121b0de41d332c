"""The SLURM profile on a real SLURM cluster (tests/slurm_cluster.py: slurmctld, two slurmd, slurmdbd
with MariaDB, munged; Debian's slurm-wlm 22.05), built on this machine for the module and torn down
after it. Needs root and apt-get (CI has both); elsewhere every test here skips, saying how to run
them. Select them alone with ``pytest -m slurm``.

Each run goes through profiles/slurm as a user of a small cluster would run it: the profile as it is,
plus what such a user sets on the command line. Here that is ``--max-threads 1``: the nodes have two
CPUs, and one thread per job is also what the local run (the ``tiny_run`` fixture) used, whose
results the cluster's must equal (the training's results depend on its thread count:
config/README.md, "Threads"). Only the first status check comes sooner (1 s, not the profile's 40 s)
to keep the tests short. Every wait is bounded: a run that hangs fails its test.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import slurm_cluster

from conftest import REPO, SNAKEFILE, VENV_BIN

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

# The profile as a user passes it, relative to the directory Snakemake starts in, with --directory:
# the partition file must still be found (profiles/slurm/config.yaml).
PROFILE = "profiles/slurm"
QUICK = ["--max-threads", "1", "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"]
# The submissions of the tiny DAG with the profile's groups: prepare_dataset, 3 finetune_epoch, the
# analysis group of (mnet, colours), and the CPU jobs of the tables and figures.
GPU_RULES = {"finetune_epoch", "extract", "source_stats", "layer_stats", "filter_scores", "score"}
MEM_MB = {"prepare_dataset": 4000, "finetune_epoch": 12000, "table1": 2000, "visualize": 2000, "table2": 2000,
          "metric_correlation": 2000, "similarity_curves": 2000, "findings": 2000}


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    slurm_cluster.install()
    root = Path(tempfile.mkdtemp(prefix="featdyn-slurm-"))
    root.chmod(0o755)  # MariaDB runs as mysql and must reach its data folder
    c = slurm_cluster.Cluster(root)
    try:
        c.start()
        yield c
    finally:
        pids = [p.pid for p in c.procs.values()]
        c.stop()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), \
                f"daemon {pid} still runs"
        assert not root.exists() and not slurm_cluster.ETC_CONF.exists(), "the cluster's configuration was removed"


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--profile", PROFILE, *args]


def finish(popen: subprocess.Popen, timeout: float) -> str:
    """The output of a Snakemake run, waiting at most ``timeout`` s. A run still going then is
    interrupted (SIGINT: the plugin cancels its jobs), killed if that does not end it, and any job
    left on the cluster cancelled; the test fails."""
    try:
        return popen.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        popen.send_signal(signal.SIGINT)
        try:
            out = popen.communicate(timeout=90)[0]
        except subprocess.TimeoutExpired:
            popen.kill()
            out = popen.communicate(timeout=30)[0]
        subprocess.run(["scancel", "--user", "root"], env=os.environ | {"SLURM_CONF": str(slurm_cluster.ETC_CONF)},
                       timeout=30, capture_output=True)
        raise AssertionError(f"Snakemake did not finish within {timeout} s:\n{out[-5000:]}") from None


def start(cluster, workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(snakemake_cmd(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cluster.env, cwd=REPO)


def run(cluster, workdir: Path, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    popen = start(cluster, workdir, *args)
    out = finish(popen, timeout)
    if check:
        assert popen.returncode == 0, out[-8000:]
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, "")


def run_id(proc_or_text) -> str:
    text = proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stdout + proc_or_text.stderr
    return re.search(r"SLURM run ID: (\S+)", text).group(1)


def jobs_of(cluster, run: str, settle: float = 30) -> list[dict]:
    """The run's jobs in sacct (its jobs are named after the run ID), each with its rule. slurmctld
    hands the records to slurmdbd a moment later: wait (at most ``settle`` s) until squeue has no job
    of the run left and sacct has every job that squeue showed, in a final state."""
    end = time.monotonic() + settle
    while True:
        queued = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "--name", run], capture_output=True,
                                text=True, env=cluster.env, timeout=20).stdout.split()
        rows = cluster.sacct("--name", run)
        ids = {r["JobIDRaw"] for r in rows}
        done = all(r["State"] not in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED") for r in rows)
        if (done and {q.split("|")[0] for q in queued} <= ids) or time.monotonic() > end:
            break
        time.sleep(0.5)
    for r in rows:
        m = re.match(r"rule_(.+?)(?:_wildcards_|$)", r["Comment"])
        r["rule"] = m.group(1) if m else r["Comment"]
    return rows


def copy_of(tiny_run: Path, dst: Path) -> Path:
    shutil.copytree(tiny_run, dst, symlinks=True)
    shutil.rmtree(dst / ".snakemake", ignore_errors=True)  # no locks or metadata of the local run's paths
    return dst


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_tables(a: Path, b: Path) -> list[str]:
    """The tables and score files that differ between two runs (byte for byte)."""
    names = sorted(str(p.relative_to(a)) for p in (a / "results").glob("**/*.csv")
                   if p.parts[-3:-1] != ("results", "benchmarks") and "benchmarks" not in p.parts)
    assert names, f"no tables under {a}/results"
    return [n for n in names if not (b / n).exists() or digest(a / n) != digest(b / n)]


def same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    sa, sb = torch.load(a, map_location="cpu", weights_only=False), torch.load(b, map_location="cpu",
                                                                                weights_only=False)
    sa, sb = sa.get("model", sa), sb.get("model", sb)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the whole DAG -----------------------------------------------------------------------------------

def test_tiny_workflow_on_the_cluster_equals_the_local_run(cluster, tiny_run, tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(tiny_run / "config.yaml", work)
    shutil.copytree(tiny_run / "data", work / "data")
    t0 = time.monotonic()
    proc = run(cluster, work, *QUICK, timeout=900)
    wall = time.monotonic() - t0
    jobs = jobs_of(cluster, run_id(proc))
    print(f"cluster run: {len(jobs)} submissions, {wall:.0f} s")
    assert jobs and all(j["State"] == "COMPLETED" for j in jobs), jobs
    for j in jobs:
        m = re.search(r"gres/gpu=(\d+)", j["AllocTRES"])
        gpus = int(m.group(1)) if m else 0
        if j["rule"] == "finetune_epoch":
            assert (j["Partition"], j["NodeList"], gpus, j["AllocCPUS"]) == ("gpu", "g1", 1, "1"), j
        elif j["rule"].startswith("analysis"):  # two of its jobs at a time, a GPU and a thread each
            assert (j["Partition"], j["NodeList"], gpus, j["AllocCPUS"]) == ("gpu", "g1", 2, "2"), j
        else:
            assert (j["Partition"], j["NodeList"], gpus, j["AllocCPUS"]) == ("cpu", "c1", 0, "1"), j
        if j["rule"] in MEM_MB:
            assert j["ReqMem"] == f"{MEM_MB[j['rule']]}M", j
    rules = sorted(j["rule"] for j in jobs)
    # one group job for the analysis of (mnet, colours), the fine-tuning one job per epoch
    assert rules.count("finetune_epoch") == 3 and sum(r.startswith("analysis") for r in rules) == 1, rules
    assert not GPU_RULES - {"finetune_epoch"} & set(rules), "the analysis rules ran in the group job"
    assert len(jobs) == 11, rules
    assert "fetch_weights" not in rules, "a local rule (the login node downloads)"
    assert same_tables(work, tiny_run) == [], "the cluster's tables equal the local run's"


def test_jobs_too_large_for_every_node_stop_before_submission(cluster, tiny_run, tmp_path):
    """The profile's set-threads (16 and 8) on nodes of 2 CPUs: a clear error, no job submitted."""
    work = copy_of(tiny_run, tmp_path / "run")
    proc = run(cluster, work, "--forcerun", "prepare_dataset", "--slurm-init-seconds-before-status-checks", "1",
               check=False, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "prepare_dataset: asks for 16 threads" in text and "finetune_epoch: asks for 8 threads" in text, text[-3000:]
    assert "--max-threads" in text and "set-threads" in text
    assert jobs_of(cluster, run_id(proc)) == [], "nothing was submitted"


# -- faults ------------------------------------------------------------------------------------------

EPOCH1 = "results/checkpoints/mnet/colours/epoch_1.pt"
STORE0 = "results/activations/mnet/colours/epoch_0.zarr"
TABLE1 = "results/tables/table1_accuracy.csv"


def wait_for_job(cluster, workdir: Path, rule: str, state: str = "RUNNING", timeout: float = 180) -> str:
    """The ID of the job of ``rule`` (its comment starts with rule_<rule>) run in ``workdir`` once it
    is in ``state`` (squeue), waiting at most ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z|%k"], capture_output=True, text=True,
                             env=cluster.env, timeout=20).stdout
        for line in out.splitlines():
            job, st, wd, comment = line.split("|", 3)
            if st == state and Path(wd) == workdir and comment.startswith(f"rule_{rule}"):
                return job
        time.sleep(0.3)
    raise AssertionError(f"no {rule} job of {workdir} reached {state} within {timeout} s")


def kill_step(cluster, job: str, timeout: float = 60) -> None:
    """SIGKILL every process of the job's step (the job's Snakemake and its script, not SLURM's
    slurmstepd), found by the cgroup of the step's task."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        files = list(Path("/sys/fs/cgroup/memory").glob(f"slurm_*/uid_*/job_{job}/step_0/task_*/cgroup.procs"))
        pids = [int(p) for f in files for p in f.read_text().split()]
        if pids:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} never had a step with processes")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def faults(cluster, tiny_run, tmp_path_factory):
    """One run of two independent jobs on a copy of the local run, a fault for each: the fine-tuning
    of epoch 1 has its processes killed (kill -9) while it runs, and the feature maps of epoch 0 (an
    analysis group job of one) get 300 MB on the first attempt (torch alone needs more: the cgroup
    kills it). Returns (return code, output, {rule: sacct rows}, work)."""
    work = copy_of(tiny_run, tmp_path_factory.mktemp("faults") / "run")
    popen = start(cluster, work, *QUICK, "--set-resources", "extract:mem_mb=300*attempt**3", "--force",
                  EPOCH1, STORE0)
    try:
        kill_step(cluster, wait_for_job(cluster, work, "finetune_epoch"))
    finally:
        out = finish(popen, 420)
    rows = jobs_of(cluster, run_id(out))
    by_rule = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r)
    return popen.returncode, out, by_rule, work


def test_a_killed_job_is_retried_with_more_memory(faults, tiny_run):
    rc, out, jobs, work = faults
    assert rc == 0, out[-6000:]
    runs = [(j["State"], j["ReqMem"]) for j in jobs["finetune_epoch"]]
    assert runs == [("FAILED", "12000M"), ("COMPLETED", "24000M")], jobs
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)


def test_a_job_over_its_memory_is_retried_with_more(cluster, faults, tiny_run):
    rc, out, jobs, work = faults
    assert rc == 0, out[-6000:]
    group = next(v for k, v in jobs.items() if k.startswith("analysis"))
    assert [j["ReqMem"] for j in group] == ["300M", "2400M"] and group[1]["State"] == "COMPLETED", group
    # the step that the cgroup killed (the job itself reads FAILED: its step failed)
    steps = subprocess.run(["sacct", "-n", "-P", "-j", group[0]["JobIDRaw"], "-o", "JobID,State"], capture_output=True,
                           text=True, env=cluster.env, timeout=30).stdout
    assert "OUT_OF_MEMORY" in steps, steps
    assert tree_digest(work / STORE0) == tree_digest(tiny_run / STORE0)


def test_a_cancelled_job_is_retried_not_waited_for(cluster, tiny_run, tmp_path):
    """scancel: sacct says "CANCELLED by 0", which plugin 2.8.0 does not take for a failure (it would
    wait forever); the profile's squeue status command sees CANCELLED and the retry runs."""
    work = copy_of(tiny_run, tmp_path / "run")
    popen = start(cluster, work, *QUICK, "--force", TABLE1)
    try:
        job = wait_for_job(cluster, work, "table1")
        subprocess.run(["scancel", job], check=True, env=cluster.env, timeout=20)
    finally:
        out = finish(popen, 300)
    assert popen.returncode == 0, out[-6000:]
    assert [j["State"] for j in jobs_of(cluster, run_id(out))] == ["CANCELLED by 0", "COMPLETED"]
    assert digest(work / TABLE1) == digest(tiny_run / TABLE1)


def test_ctrl_c_cancels_the_jobs_and_a_rerun_completes(cluster, tiny_run, tmp_path):
    """Ctrl-C while a job runs: the plugin cancels it and Snakemake exits (within 2 minutes), leaving
    no checkpoint; the same command again runs the job and completes."""
    work = copy_of(tiny_run, tmp_path / "run")
    (work / EPOCH1).unlink()
    popen = start(cluster, work, *QUICK, EPOCH1)
    try:
        wait_for_job(cluster, work, "finetune_epoch")
        popen.send_signal(signal.SIGINT)
    finally:
        out = finish(popen, 120)
    assert popen.returncode != 0, out[-3000:]
    assert [j["State"] for j in jobs_of(cluster, run_id(out))] == ["CANCELLED by 0"], "Snakemake cancelled its job"
    assert not (work / EPOCH1).exists()
    proc = run(cluster, work, *QUICK, EPOCH1, timeout=180)
    assert [j["State"] for j in jobs_of(cluster, run_id(proc))] == ["COMPLETED"]
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)

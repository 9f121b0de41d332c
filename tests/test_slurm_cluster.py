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


def jobs_of(cluster, run: str) -> list[dict]:
    """The run's jobs in sacct (its jobs are named after the run ID), each with its rule."""
    rows = [r for r in cluster.sacct("--name", run)]
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


def wait_for_job(cluster, workdir: Path, state: str = "RUNNING", timeout: float = 180) -> str:
    """The ID of the first job run in ``workdir`` to be in ``state`` (squeue), waiting at most ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z"], capture_output=True, text=True, env=cluster.env,
                             timeout=20).stdout
        for line in out.splitlines():
            job, st, wd = line.split("|")
            if st == state and Path(wd) == workdir:
                return job
        time.sleep(0.3)
    raise AssertionError(f"no job of {workdir} reached {state} within {timeout} s")


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
        gpu = "gres/gpu=1" in j["AllocTRES"]
        if j["rule"] in GPU_RULES or j["rule"].startswith("analysis"):
            assert (j["Partition"], j["NodeList"], gpu) == ("gpu", "g1", True), j
        else:
            assert (j["Partition"], j["NodeList"], gpu) == ("cpu", "c1", False), j
        if j["rule"] in MEM_MB:
            assert j["ReqMem"] == f"{MEM_MB[j['rule']]}M", j
        assert j["AllocCPUS"] == "1", j
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


def rerun_epoch1(cluster, tiny_run, tmp_path, *args, fault=None, timeout=300):
    """Rerun the fine-tuning of epoch 1 (one GPU job) on a copy of the local run, ``fault(popen)``
    acting while it runs; returns the finished process, its sacct rows and the copy."""
    work = copy_of(tiny_run, tmp_path / "run")
    popen = start(cluster, work, *QUICK, "--force", EPOCH1, *args)
    try:
        if fault is not None:
            fault(popen, work)
    finally:
        out = finish(popen, timeout)
    jobs = jobs_of(cluster, run_id(out))
    return popen.returncode, out, jobs, work


def test_a_killed_job_is_retried_with_more_memory(cluster, tiny_run, tmp_path):
    def kill_the_step(popen, work):
        job = wait_for_job(cluster, work)
        # the processes of the job's step (the job's Snakemake and the script), by the step's cgroup
        end = time.monotonic() + 60
        while time.monotonic() < end:
            procs = list(Path("/sys/fs/cgroup/memory").glob(f"slurm_*/uid_*/job_{job}/step_0/cgroup.procs"))
            pids = [int(p) for f in procs for p in f.read_text().split()]
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job} never had a step with processes")

    rc, out, jobs, work = rerun_epoch1(cluster, tiny_run, tmp_path, fault=kill_the_step)
    assert rc == 0, out[-5000:]
    assert [(j["State"], j["ReqMem"]) for j in jobs] == [("FAILED", "12000M"), ("COMPLETED", "24000M")], jobs
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)


def test_a_job_over_its_memory_is_retried_with_more(cluster, tiny_run, tmp_path):
    # 300 MB on the first attempt (torch alone needs more: the cgroup kills it), 2400 MB on the retry
    rc, out, jobs, work = rerun_epoch1(cluster, tiny_run, tmp_path, "--set-resources",
                                       "finetune_epoch:mem_mb=300*attempt**3")
    assert rc == 0, out[-5000:]
    assert [(j["State"], j["ReqMem"]) for j in jobs] == [("OUT_OF_MEMORY", "300M"), ("COMPLETED", "2400M")], jobs
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)


def test_a_cancelled_job_is_retried_not_waited_for(cluster, tiny_run, tmp_path):
    """scancel: sacct says "CANCELLED by 0", which plugin 2.8.0 does not take for a failure (it would
    wait forever); the profile's squeue status command sees CANCELLED and the retry runs."""
    def cancel(popen, work):
        job = wait_for_job(cluster, work)
        subprocess.run(["scancel", job], check=True, env=cluster.env, timeout=20)

    rc, out, jobs, work = rerun_epoch1(cluster, tiny_run, tmp_path, fault=cancel, timeout=180)
    assert rc == 0, out[-5000:]
    assert [j["State"] for j in jobs] == ["CANCELLED by 0", "COMPLETED"], jobs
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)


def test_ctrl_c_cancels_the_jobs_and_a_rerun_completes(cluster, tiny_run, tmp_path):
    def interrupt(popen, work):
        wait_for_job(cluster, work)
        popen.send_signal(signal.SIGINT)

    rc, out, jobs, work = rerun_epoch1(cluster, tiny_run, tmp_path, fault=interrupt, timeout=120)
    assert rc != 0, out[-3000:]
    assert [j["State"] for j in jobs] == ["CANCELLED by 0"], ("Snakemake cancelled its job", jobs)
    assert not (work / EPOCH1).exists()
    proc = run(cluster, work, *QUICK, EPOCH1, timeout=180)
    assert [j["State"] for j in jobs_of(cluster, run_id(proc))] == ["COMPLETED"]
    assert same_checkpoint(work / EPOCH1, tiny_run / EPOCH1)

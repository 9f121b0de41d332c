"""Stand-ins for SLURM's commands, for tests/test_slurm.py: each call is recorded, a job runs at once,
locally, and its state is answered to sacct/squeue as snakemake-executor-plugin-slurm parses it.

Called as ``fake_slurm.py <command> <args...>`` by small wrappers named sbatch, srun, sacct, squeue,
scancel, sinfo and scontrol on PATH. State lives in $FAKE_SLURM_DIR: ``calls.jsonl`` (one line per
call) and ``jobs.jsonl`` (one line per job: id, name, state). $FAKE_SLURM_OOM = ``<rule>:<MB>``
makes a job of that rule that asks for less memory fail as OUT_OF_MEMORY without running, as a
cluster kills a job over its memory. $FAKE_SLURM_NODES replaces sinfo's node lines
(``partition|CPUs|MB|GRES|time limit``, one per line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])


def record(name: str, file: str, **row) -> None:
    with open(STATE / file, "a") as f:
        f.write(json.dumps({"cmd": name, **row}) + "\n")


def jobs() -> list[dict]:
    path = STATE / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def option(args: list[str], *names: str) -> str | None:
    """The value of ``--name value``, ``--name=value`` or ``-n value`` in ``args``."""
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def sbatch(args: list[str]) -> int:
    job_id = str(1000 + len(jobs()))
    wrap = option(args, "--wrap")
    comment = option(args, "--comment") or ""
    mem = int(option(args, "--mem") or 0)
    oom = os.environ.get("FAKE_SLURM_OOM")
    state = "COMPLETED"
    if oom and comment.startswith(f"rule_{oom.split(':')[0]}") and mem < int(oom.split(":")[1]):
        state = "OUT_OF_MEMORY"
    else:
        log = Path((option(args, "--output") or "slurm-%j.out").replace("%j", job_id))
        log.parent.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"SLURM_JOB_ID": job_id}
        if option(args, "--gpus"):
            env["SLURM_GPUS"] = option(args, "--gpus")
        with open(log, "w") as out:
            rc = subprocess.run(["bash", "-c", wrap], cwd=option(args, "-D"), env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
        state = "COMPLETED" if rc == 0 else "FAILED"
    with open(STATE / "jobs.jsonl", "a") as f:
        f.write(json.dumps({"id": job_id, "name": option(args, "--job-name"), "state": state}) + "\n")
    print(job_id)
    return 0


def srun(args: list[str]) -> int:
    # the plugin's job step: srun -n1 --cpu-bind=q --cpus-per-task=N [--gpus=N] --nodes=1 <command...>
    i = next(i for i, a in enumerate(args) if not a.startswith("-"))
    return subprocess.run(args[i:]).returncode


def status(args: list[str]) -> int:
    """sacct/squeue --name <run>: one ``<id>|<STATE>`` line per job of the run. The plugin's other
    queries (the account of recent jobs, a failed job's reason) get an empty or fixed answer."""
    if option(args, "-j") is not None:  # sacct -j <id>.<step> --format=Reason: why a job failed
        print("OutOfMemory" if "Reason" in " ".join(args) else "")
        return 0
    name = option(args, "--name")
    for job in jobs():
        if name is not None and job["name"] == name:
            print(f"{job['id']}|{job['state']}")
    return 0


def main() -> int:
    name, args = sys.argv[1], sys.argv[2:]
    record(name, "calls.jsonl", args=args, cwd=os.getcwd())
    if name == "sbatch":
        return sbatch(args)
    if name == "srun":
        return srun(args)
    if name in ("sacct", "squeue"):
        return status(args)
    if name == "sinfo" and any(a.startswith("%P|%c|%m|%G") for a in args):  # nodes per partition (featdyn.cluster)
        print(os.environ.get("FAKE_SLURM_NODES", "cpu*|64|256000|(null)|infinite\ngpu|32|512000|gpu:4|2-00:00:00"))
    elif name == "sinfo":
        print("PARTITION\ncpu*\ngpu")
    elif name == "scontrol":
        print("MinJobAge               = 300 sec\nMaxArraySize            = 1001")
    return 0  # scancel: nothing to cancel


if __name__ == "__main__":
    sys.exit(main())

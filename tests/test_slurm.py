"""The SLURM profile, run for real against stand-ins for sbatch, srun, sacct, squeue, scancel, sinfo
and scontrol (tests/fake_slurm.py): every call is recorded and each job runs at once, locally."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEFILE, VENV_BIN

pytestmark = pytest.mark.workflow

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "sinfo", "scontrol")


def fake_slurm(tmp: Path) -> dict:
    """A PATH with the stand-ins first, and their state folder."""
    bin_dir, state = tmp / "bin", tmp / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name in COMMANDS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_slurm.py"}" {name} "$@"\n')
        script.chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}


def submissions(state: Path) -> list[dict]:
    """The sbatch calls: rule (from --comment), partition, memory, GPUs."""
    out = []
    for line in (state / "calls.jsonl").read_text().splitlines():
        call = json.loads(line)
        if call["cmd"] != "sbatch":
            continue
        args = " ".join(call["args"])
        out.append({"rule": re.search(r"--comment '?rule_([a-z0-9]+(?:_[a-z0-9]+)*?)(?:_wildcards_|'| )", args)
                    .group(1), "partition": re.search(r" -p (\S+)", args).group(1),
                    "mem": int(re.search(r"--mem (\d+)", args).group(1)),
                    "gpus": (m.group(1) if (m := re.search(r"--gpus=(\S+)", args)) else None)})
    return out


def test_slurm_profile_partitions_gpus_local_rules_and_retry_memory(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    env = fake_slurm(tmp_path)
    # The table job asks for too little memory the first time (the profile's default: 2000 MB x attempt).
    env["FAKE_SLURM_OOM"] = "table1:3000"

    def snakemake_slurm(config, *targets):
        cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(run),
               "--configfile", str(config), "--profile", str(REPO / "profiles/slurm"),
               "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
               "--latency-wait", "5", "--force", *targets]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=run)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # a GPU rule and a CPU rule, neither upstream of the other
    snakemake_slurm(run / "config.yaml", "results/stats/mnet/colours/epoch_1.npz",  # layer_stats
                    "results/tables/table1_accuracy.csv")  # table1
    # a local rule: the source weights of a second model (apart from the first model's chain)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["models"]["mnet_b"] = config["models"]["mnet"]
    (run / "slurm.yaml").write_text(yaml.safe_dump(config))
    snakemake_slurm(run / "slurm.yaml", "results/weights/mnet_b.pt")

    subs = submissions(tmp_path / "slurm")
    rules = [s["rule"] for s in subs]
    # layer_stats goes as the analysis group job of the profile (groups), here a group of one
    assert sorted(rules) == ["analysis_layer_stats", "table1", "table1"], subs
    assert (run / "results/weights/mnet_b.pt").is_file(), "the local rule ran, on the login node"
    gpu = next(s for s in subs if s["rule"] == "analysis_layer_stats")
    assert (gpu["partition"], gpu["gpus"]) == ("gpu", "1"), gpu
    first, retry = [s for s in subs if s["rule"] == "table1"]
    assert (first["partition"], first["gpus"], retry["partition"], retry["gpus"]) == ("cpu", None, "cpu", None)
    assert retry["mem"] == 2 * first["mem"] == 4000, "the retry of a job killed for memory asks for twice as much"
    assert (run / "results/tables/table1_accuracy.csv").stat().st_size > 0
    # each job step ran through srun, a GPU for the GPU job's step
    steps = [json.loads(line)["args"] for line in (tmp_path / "slurm/calls.jsonl").read_text().splitlines()
             if json.loads(line)["cmd"] == "srun"]
    assert len(steps) == 2 and sum("--gpus=1" in s for s in steps) == 1, steps


def test_a_group_job_larger_than_every_node_is_refused_before_any_submission(tiny_run, tmp_path):
    """The profile's analysis group job asks for what its jobs running side by side need together:
    the analysis of (mnet, colours) from its stores on (three extract jobs at once) asks for 2 GPUs
    (the profile's `resources: gpu: 2`). Each job alone fits a node with one GPU; the group job does
    not, and SLURM would keep it pending for good. The check sees the group job, names it and the
    fix, and nothing is submitted; so is a group job longer than the partition's time limit. (The
    same group job on nodes with two GPUs and no time limit runs on the real cluster:
    tests/test_slurm_cluster.py.)"""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    env = fake_slurm(tmp_path) | {"FAKE_SLURM_NODES": "cpu*|64|256000|(null)|infinite\ngpu|32|512000|gpu:1|2-00:00:00"}
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(run),
           "--configfile", str(run / "config.yaml"), "--profile", str(REPO / "profiles/slurm"),
           "--forcerun", "extract", "--", "results/scores/procrustes/mnet/colours.csv"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=run)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "analysis group job" in out and "2 GPU(s)" in out and "resources: gpu" in out, out[-3000:]
    assert "no partition has nodes with 2 GPU(s)" in out, out[-3000:]
    calls = (tmp_path / "slurm/calls.jsonl").read_text()
    assert '"sbatch"' not in calls, "nothing was submitted"
    # nodes with two GPUs, but a partition time limit of 2 hours: the group job's wall time adds up
    # the profile's runtimes of its jobs that run one after the other (60 min per extract, 30 per other)
    env["FAKE_SLURM_NODES"] = "cpu*|64|256000|(null)|infinite\ngpu|32|512000|gpu:2|2:00:00"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=run)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    line = next(x for x in out.splitlines() if "analysis group job" in x)
    assert "2 GPU(s)" in line and "time limit 120 min" in line, line
    assert int(re.search(r"(\d+) min;", line).group(1)) > 120, line
    assert '"sbatch"' not in (tmp_path / "slurm/calls.jsonl").read_text(), "nothing was submitted"


def test_every_gpu_rule_can_run_on_a_gpu_partition_and_others_on_a_cpu_one():
    """The partition choice is by resources (partitions.yaml), so it covers rules added later; the
    profile names no partition that would override it."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert "slurm_partition" not in str(profile), "a fixed partition would override the choice by resources"
    assert "slurm-partition-config" not in profile, "relative, it would be lost after --directory (cluster.smk)"
    parts = yaml.safe_load((REPO / "profiles/slurm/partitions.yaml").read_text())
    limits = parts["partitions"]
    assert [n for n, p in limits.items() if p.get("max_gpu", 0) > 0] and \
           [n for n, p in limits.items() if p.get("max_gpu", 0) == 0]

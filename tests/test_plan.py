"""`make plan`: jobs per rule and disk per stage before anything runs, checked against a real run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from featdyn.nets.disk import DatasetSize, estimate
from featdyn.spec.config import with_defaults

from conftest import REPO

PLAN = [sys.executable, str(REPO / "tools" / "plan.py")]


def bytes_under(folder, pattern):
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


@pytest.mark.workflow
def test_the_estimate_matches_a_real_run(tiny_run):
    config = with_defaults(yaml.safe_load((tiny_run / "config.yaml").read_text()))
    stages = {s.stage: s for s in estimate(config, {"colours": DatasetSize(images=24, classes=2)})}
    results = tiny_run / "results"
    for stage, pattern in [("checkpoints (weights of every epoch)", "epoch_?.pt"),
                           ("resume states (optimizer)", "*.resume.pt")]:
        real = bytes_under(results / "checkpoints", pattern)
        assert abs(stages[stage].kept - real) < 0.05 * real, (stage, stages[stage].kept, real)
    real = bytes_under(results / "data", "cache.npy")
    assert abs(stages["image caches"].kept - real) < 0.1 * real + 5000


@pytest.mark.workflow
def test_plan_prints_jobs_and_disk_and_names_a_dataset_it_cannot_size(tiny_run, tmp_path):
    proc = subprocess.run(PLAN + ["--configfile", str(tiny_run / "config.yaml"), "--directory", str(tiny_run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "colours 24 images / 2 classes" in out
    assert any(line.split() == ["finetune_epoch", "3"] for line in out.splitlines()), out
    assert "| activation stores | `extract` |" in out and "**total**" in out

    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["datasets"]["later"] = {"path": "data/not-downloaded-yet"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(PLAN + ["--configfile", str(tmp_path / "c.yaml"), "--directory", str(tiny_run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "later" in proc.stderr and "--images later=" in proc.stderr

"""After a complete run, a change reruns what it changes and nothing else: each case reads the job
list of a dry run on a copy of the session's complete tiny run (conftest.tiny_run).

Case (a), one metric's parameter, is in test_workflow.py (test_tiny_pipeline_end_to_end)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEFILE, VENV_BIN, snakemake

pytestmark = pytest.mark.workflow

# What reads the scores: every change that reruns a score reruns these once each.
READERS = {"table2": 1, "metric_correlation": 1, "similarity_curves": 1, "findings": 1, "all": 1}


def dry_jobs(workdir: Path, config: Path, snakefile: Path | None = None, env: dict | None = None) -> list[tuple]:
    """[(rule, {wildcard: value})] of the jobs a dry run would run."""
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(snakefile or SNAKEFILE), "--directory",
           str(workdir), "--configfile", str(config), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ.copy(), timeout=900)
    assert proc.returncode == 0, f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    jobs, rule, wildcards = [], None, {}
    for line in proc.stdout.splitlines() + [""]:
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m or not line.strip():
            if rule:
                jobs.append((rule, wildcards))
            rule, wildcards = (m.group(1), {}) if m else (None, {})
        elif rule and line.strip().startswith("wildcards:"):
            wildcards = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
    if "Nothing to be done" not in proc.stdout + proc.stderr:
        assert jobs, f"no job found in the dry run's output:\n{proc.stdout[-3000:]}"
    return jobs


def counts(jobs) -> dict[str, int]:
    return dict(Counter(rule for rule, _ in jobs))


def epochs_of(jobs, rule) -> list[int]:
    return sorted(int(w["epoch"]) for r, w in jobs if r == rule)


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the complete tiny run (file times kept), to change and dry-run."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, symlinks=True)
    return dst


def changed_config(run: Path, change) -> Path:
    data = yaml.safe_load((run / "config.yaml").read_text())
    change(data)
    path = run / "changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_settings_that_change_no_result_rerun_nothing(run):
    def change(c):
        c["training"]["eval_batch_size"] = 5  # evaluation only
        c["device"] = "auto"  # the tiny run used cpu; auto is cpu here too
        c["retention"] = {"activations": "drop", "final_state": "keep"}  # what is kept from now on
        c["threads"] = {"finetune_epoch": 2, "layer_stats": 2, "score": 2}  # how many cores, not what
    assert dry_jobs(run, changed_config(run, change)) == []


def test_a_new_metric_runs_only_it_and_its_readers(run):
    def change(c):
        c["metrics"]["cka"] = {"kind": "cka"}
    jobs = dry_jobs(run, changed_config(run, change))
    assert counts(jobs) == {"score": 1, **READERS}, counts(jobs)
    assert [w["metric"] for r, w in jobs if r == "score"] == ["cka"]


def test_a_new_lr_retrains_epochs_from_1_not_the_source_model(run):
    def change(c):
        c["datasets"]["colours"]["training"] = {"lr": 5e-4}
    jobs = dry_jobs(run, changed_config(run, change))
    assert epochs_of(jobs, "finetune_epoch") == [1, 2], "epoch 0 (the source model) does not depend on lr"
    assert epochs_of(jobs, "extract") == [1, 2] and epochs_of(jobs, "layer_stats") == [1, 2]
    assert epochs_of(jobs, "filter_scores") == [1, 1, 2, 2]  # two filter metrics
    assert counts(jobs) == {"finetune_epoch": 2, "extract": 2, "layer_stats": 2, "filter_scores": 4, "score": 4,
                            "table1": 1, "visualize": 1, **READERS}, counts(jobs)


def test_one_more_epoch_trains_one_epoch_from_the_kept_resume_state(run):
    ckpts = run / "results/checkpoints/mnet/colours"
    assert sorted(p.name for p in ckpts.glob("*.resume.pt")) == ["epoch_2.resume.pt"], \
        "only the last epoch's optimizer state is kept"
    config = changed_config(run, lambda c: c["training"].update(epochs=3))
    jobs = dry_jobs(run, config)
    assert epochs_of(jobs, "finetune_epoch") == [3], "no earlier epoch is retrained"
    assert counts(jobs) == {"finetune_epoch": 1, "extract": 1, "layer_stats": 1, "filter_scores": 2, "score": 4,
                            "table1": 1, "visualize": 1, **READERS}, counts(jobs)
    # Train it for real: it resumes from the kept state, which is then no longer needed.
    snakemake(run, "--configfile", str(config), "--cores", "2", str(ckpts.relative_to(run) / "epoch_3.pt"))
    assert sorted(p.name for p in ckpts.glob("*.resume.pt")) == ["epoch_3.resume.pt"]
    assert "finetune_epoch" not in counts(dry_jobs(run, config))


def code_copy(dst: Path) -> Path:
    """A fresh clone: the repository's files copied with new modification times."""
    for part in ("workflow", "src", "profiles", "config", "envs"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, copy_function=shutil.copyfile,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst / part)
    return dst


def clone_env(clone: Path) -> dict:
    return os.environ | {"PYTHONPATH": str(clone / "src")}


def test_a_fresh_clone_and_edited_comments_rerun_nothing_a_code_change_reruns_its_stages(run, tmp_path):
    clone = code_copy(tmp_path / "clone")
    time.sleep(0.05)
    now = time.time()
    for p in clone.rglob("*"):  # and a touch of every file, on top of the new times of the copy
        os.utime(p, (now, now))
    # comments and docstrings of the training code change no result
    training = clone / "src/featdyn/nets/training.py"
    text = training.read_text()
    training.write_text(text.replace('"""Fine-tuning, one epoch per call', '"""Fine-tuning (edited), one epoch per call', 1)
                        .replace("# The source model's train accuracy", "# (an edited comment) The source model's", 1))
    assert training.read_text().count("edited") == 2
    config = run / "config.yaml"
    assert dry_jobs(run, config, clone / "workflow/Snakefile", clone_env(clone)) == []

    # a real change in the metrics code: the stages that run it, and what follows, nothing upstream
    metrics = clone / "src/featdyn/engine/metrics.py"
    metrics.write_text(metrics.read_text() + "\n\nRERUN_MARKER = 1\n")
    jobs = dry_jobs(run, config, clone / "workflow/Snakefile", clone_env(clone))
    ran = counts(jobs)
    assert ran.get("score") == 4, ran
    for upstream in ("prepare_dataset", "fetch_weights", "finetune_epoch", "extract"):
        assert upstream not in ran, f"{upstream} does not run the metrics code: {ran}"


def test_images_added_to_a_dataset_tree_rerun_its_preparation(run):
    config = run / "config.yaml"
    tree = run / "data/colours"
    now = time.time()
    for p in tree.rglob("*"):  # same images, new times: nothing
        os.utime(p, (now, now))
    assert dry_jobs(run, config) == []
    shutil.copyfile(tree / "class_0/img_000.png", tree / "class_0/img_100.png")
    jobs = dry_jobs(run, config)
    ran = counts(jobs)
    assert ran.get("prepare_dataset") == 1 and epochs_of(jobs, "finetune_epoch") == [0, 1, 2], ran
    assert "fetch_weights" not in ran

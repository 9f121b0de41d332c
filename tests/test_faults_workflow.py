"""Faults injected into a copy of the session's complete tiny run (issue 11): each must stop the
job that reads the damaged file, with a message that names it; before, each exited 0 with wrong
numbers in the tables."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import snakemake, tiny_config

pytestmark = pytest.mark.workflow

RUN = "mnet/colours"


def copy_run(tiny_run: Path, dst: Path) -> Path:
    shutil.copytree(tiny_run, dst, symlinks=True, dirs_exist_ok=True)
    return dst


def touch_tree(path: Path) -> None:
    """New mtimes, as `cp -r` gives: Snakemake then takes the store for up to date (a renamed store
    older than its checkpoint would simply be extracted again)."""
    for p in [path, *path.rglob("*")]:
        os.utime(p)


def log(run: Path, rule: str, name: str) -> str:
    return (run / "results" / "logs" / rule / name).read_text()


def test_swapped_stores_stop_the_similarity_jobs(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    stores = run / "results" / "activations" / RUN
    # epoch 1's and epoch 2's stores swapped; the one now at epoch_2.zarr also had its epoch
    # attribute edited to 2: only the sha256 of epoch 2's checkpoint tells it apart
    (stores / "epoch_1.zarr").rename(stores / "old_1.zarr")
    (stores / "epoch_2.zarr").rename(stores / "epoch_1.zarr")
    (stores / "old_1.zarr").rename(stores / "epoch_2.zarr")
    meta = json.loads((stores / "epoch_2.zarr" / "zarr.json").read_text())
    meta["attributes"]["epoch"] = 2
    (stores / "epoch_2.zarr" / "zarr.json").write_text(json.dumps(meta))
    for epoch in (1, 2):
        touch_tree(stores / f"epoch_{epoch}.zarr")
    targets = [f"results/stats/{RUN}/epoch_1.npz", f"results/filters/procrustes_f/{RUN}/epoch_2.csv"]
    proc = snakemake(run, "--configfile", str(run / "config.yaml"), "--cores", "2", "-k", "-f", *targets, check=False)
    assert proc.returncode != 0
    assert "rule extract" not in proc.stdout + proc.stderr, "the swapped stores must be read, not re-extracted"
    for target in targets:
        assert not (run / target).exists(), f"{target} was written from a wrong store"
    assert "epoch_1.zarr: attribute 'epoch' is 2, expected 1" in log(run, "layer_stats", f"{RUN}/epoch_1.log")
    assert "epoch_2.zarr: attribute 'checkpoint_sha256' is" in log(run, "filter_scores", f"procrustes_f/{RUN}/epoch_2.log")


def test_a_nan_checkpoint_or_a_deleted_chunk_stops_the_jobs_that_read_them(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    # the last epoch's checkpoint: its optimizer state is kept, so one more epoch can read it
    path = run / "results" / "checkpoints" / RUN / "epoch_2.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["features.2.conv.0.0.weight"].view(-1)[3] = float("nan")
    torch.save(ckpt, path)
    chunk = run / "results" / "activations" / RUN / "epoch_0.zarr" / "features.1" / "c" / "1" / "0" / "0" / "0"
    chunk.unlink()  # before, read as zeros: Table 2 changed and the run exited 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["training"]["epochs"] = 3
    (run / "epochs3.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/checkpoints/{RUN}/epoch_3.pt", f"results/activations/{RUN}/epoch_2.zarr",
               f"results/stats/{RUN}/source.npz"]
    proc = snakemake(run, "--configfile", str(run / "epochs3.yaml"), "--cores", "2", "-k", "-f", *targets, check=False)
    assert proc.returncode != 0
    named = (f"checkpoint results/checkpoints/{RUN}/epoch_2.pt (epoch 2): weight 'features.2.conv.0.0.weight' "
             f"is not finite")
    assert named in log(run, "finetune_epoch", f"{RUN}/epoch_3.log")
    assert named in log(run, "extract", f"{RUN}/epoch_2.log")
    assert not (run / f"results/checkpoints/{RUN}/epoch_3.json").exists(), "no metrics row with NaN losses"
    assert f"chunk file results/activations/{RUN}/epoch_0.zarr/features.1/c/1/0/0/0 of layer 'features.1' is " \
           f"missing" in log(run, "source_stats", f"{RUN}.log")
    for target in targets:
        assert not (run / target).exists()


def test_missing_intermediates_are_announced_with_the_command(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "results" / "stats" / RUN / "epoch_1.npz").unlink()
    proc = snakemake(run, "--configfile", str(run / "config.yaml"), "-n")
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out, "Snakemake itself sees nothing to do: hence the warning"
    assert f"1 intermediate file(s) of a complete run are missing (e.g. results/stats/{RUN}/epoch_1.npz)" in out
    assert "snakemake --forcerun layer_stats" in out


def test_a_misspelt_top_level_key_stops_the_workflow_with_a_suggestion(tmp_path):
    cfg = tiny_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["trainig"] = data.pop("training")
    cfg.write_text(yaml.safe_dump(data))
    proc = snakemake(tmp_path, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "unknown key 'trainig' (did you mean 'training'?)" in proc.stdout + proc.stderr

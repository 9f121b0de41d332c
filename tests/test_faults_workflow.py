"""Faults injected into a copy of the session's complete tiny run (issue 11): each must stop the
job that reads the damaged file, with a message that names it; before, each exited 0 with wrong
numbers in the tables."""

from __future__ import annotations

import json
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


def log(run: Path, rule: str, name: str) -> str:
    return (run / "results" / "logs" / rule / name).read_text()


def test_a_deleted_chunk_or_a_swapped_store_stops_the_similarity_jobs(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    stores = run / "results" / "activations" / RUN
    shutil.rmtree(stores / "epoch_1.zarr")
    shutil.copytree(stores / "epoch_2.zarr", stores / "epoch_1.zarr")  # epoch 2's store as epoch 1's
    chunk = stores / "epoch_2.zarr" / "features.1" / "c" / "1" / "0" / "0" / "0"
    chunk.unlink()
    targets = [f"results/stats/{RUN}/epoch_1.npz", f"results/stats/{RUN}/epoch_2.npz",
               f"results/filters/procrustes_f/{RUN}/epoch_1.csv"]
    proc = snakemake(run, "--configfile", str(run / "config.yaml"), "--cores", "2", "-k", "-f", *targets, check=False)
    assert proc.returncode != 0
    for target in targets:
        assert not (run / target).exists(), f"{target} was written from a wrong store"
    swapped = "epoch_1.zarr: attribute 'epoch' is 2, expected 1"
    assert swapped in log(run, "layer_stats", f"{RUN}/epoch_1.log")
    assert swapped in log(run, "filter_scores", f"procrustes_f/{RUN}/epoch_1.log")
    assert f"chunk file results/activations/{RUN}/epoch_2.zarr/features.1/c/1/0/0/0 of layer 'features.1' is " \
           f"missing" in log(run, "layer_stats", f"{RUN}/epoch_2.log")

    # Its epoch attribute edited to match: the sha256 of epoch 1's checkpoint still tells them apart.
    meta = json.loads((stores / "epoch_1.zarr" / "zarr.json").read_text())
    meta["attributes"]["epoch"] = 1
    (stores / "epoch_1.zarr" / "zarr.json").write_text(json.dumps(meta))
    proc = snakemake(run, "--configfile", str(run / "config.yaml"), "--cores", "1", "-f", targets[0], check=False)
    assert proc.returncode != 0
    assert "epoch_1.zarr: attribute 'checkpoint_sha256' is" in log(run, "layer_stats", f"{RUN}/epoch_1.log")


def test_a_checkpoint_with_a_nan_weight_stops_training_and_extraction(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    path = run / "results" / "checkpoints" / RUN / "epoch_1.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["features.2.conv.0.0.weight"].view(-1)[3] = float("nan")
    torch.save(ckpt, path)
    targets = [f"results/checkpoints/{RUN}/epoch_2.pt", f"results/activations/{RUN}/epoch_1.zarr"]
    proc = snakemake(run, "--configfile", str(run / "config.yaml"), "--cores", "2", "-k", "-f", *targets, check=False)
    assert proc.returncode != 0
    named = (f"checkpoint results/checkpoints/{RUN}/epoch_1.pt (epoch 1): weight 'features.2.conv.0.0.weight' "
             f"is not finite")
    assert named in log(run, "finetune_epoch", f"{RUN}/epoch_2.log")
    assert named in log(run, "extract", f"{RUN}/epoch_1.log")
    assert not (run / f"results/checkpoints/{RUN}/epoch_2.json").exists(), "no metrics row with NaN losses"
    assert not (run / targets[1]).exists()


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

"""Recipes in the real workflow, on a copy of the session's tiny run (its model `mnet` is the full
fine-tuning reference): a frozen recipe and the distance-proportional recipe (lr_from: mnet) are
added. The DAG orders the lr_from chain after the reference's score file; frozen layers' distances
are exactly 0; the rates recorded in the checkpoints are the configured mapping of the reference
distances; the recipe table and the summary's recipe section exist; and a change to one recipe, or
to the reference, reruns exactly what it should."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
import zarr
from test_reruns import READERS, counts, dry_jobs, epochs_of

from conftest import SNAKEFILE, VENV_BIN, snakemake

pytestmark = pytest.mark.workflow

FROZEN = ["features.0", "features.1"]  # features.1 is an analysed layer of the tiny config


def recipe_config(data: dict) -> dict:
    data["metrics"] = {"procrustes": {"kind": "procrustes"}}  # one metric: fewer jobs
    base = {k: v for k, v in data["models"]["mnet"].items() if k != "training"}
    data["models"]["frozen"] = base | {"training": {"freeze": FROZEN}}
    data["models"]["prop"] = base | {"training": {"lr_from": {"model": "mnet", "floor": 0.05}}}
    return data


@pytest.fixture(scope="module")
def recipe_run(tiny_run, tmp_path_factory):
    """The tiny run copied (file times kept), with two recipes of mnet's architecture added."""
    run = tmp_path_factory.mktemp("recipes") / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    config = run / "recipes.yaml"
    config.write_text(yaml.safe_dump(recipe_config(yaml.safe_load((run / "config.yaml").read_text()))))
    planned = dry_run_inputs(run, config)
    snakemake(run, "--configfile", str(config), "--cores", "2")
    return run, config, planned


def dry_run_inputs(run, config) -> dict[tuple, list[str]]:
    """{(rule, model, epoch): input files} of the jobs a dry run lists."""
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(run), "--configfile",
           str(config), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        wildcards = re.search(r"wildcards: (.*)", block)
        inputs = re.search(r"input: (.*)", block)
        if rule and wildcards:
            w = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", "))
            jobs[(rule.group(1), w.get("model"), w.get("epoch"))] = inputs.group(1).split(", ") if inputs else []
    return jobs


def scores(run, model) -> list[dict]:
    """The distances to the source model (not the permutation null's or the replicates' rows)."""
    with open(run / f"results/scores/procrustes/{model}/colours.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("comparison", "source") == "source"]


def test_the_lr_from_chain_waits_for_the_reference_score_file(recipe_run):
    run, _, planned = recipe_run
    reference = "results/scores/procrustes/mnet/colours.csv"
    for epoch in ("1", "2"):
        assert reference in planned[("finetune_epoch", "prop", epoch)], "epochs >= 1 read the reference scores"
    assert reference not in planned[("finetune_epoch", "prop", "0")], "epoch 0 is the source model"
    assert not any(reference in files for (rule, model, _), files in planned.items() if model == "frozen")
    # and so Snakemake ran the chain after the reference's score job
    scored = (run / reference).stat().st_mtime
    assert all((run / f"results/checkpoints/prop/colours/epoch_{e}.pt").stat().st_mtime > scored for e in (1, 2))


def test_frozen_layers_stay_bit_identical_and_their_distance_is_exactly_zero(recipe_run):
    run, _, _ = recipe_run
    ckpts = run / "results/checkpoints/frozen/colours"
    source = torch.load(ckpts / "epoch_0.pt", weights_only=True)["model"]
    frozen = [k for k in source if any(k.startswith(p + ".") for p in FROZEN)]
    assert any("running_var" in k for k in frozen)
    for e in (1, 2):
        state = torch.load(ckpts / f"epoch_{e}.pt", weights_only=True)["model"]
        assert all(torch.equal(source[k], state[k]) for k in frozen), f"epoch {e}"
        assert not torch.equal(source["features.3.conv.0.0.weight"], state["features.3.conv.0.0.weight"])
    # The frozen layer's features are the source's bit for bit, so its distance at every epoch is the
    # source compared with itself: epoch 0's value exactly (0 up to float64 rounding of the metric).
    stores = [zarr.open_group(str(run / f"results/activations/frozen/colours/epoch_{e}.zarr"), mode="r")
              for e in (0, 1, 2)]
    assert all(np.array_equal(stores[0]["features.1"][:], s["features.1"][:]) for s in stores[1:])
    rows = scores(run, "frozen")
    first = [float(r["value"]) for r in rows if r["layer"] == "features.1"]
    deep = [float(r["value"]) for r in rows if r["layer"] == "features.3" and int(r["epoch"]) >= 1]
    assert len(first) == 3 and first[1] == first[2] == first[0] and abs(first[0]) < 1e-12, first
    assert all(v > 1e-6 for v in deep), deep


def test_the_recorded_rates_are_the_mapping_of_the_reference_distances(recipe_run):
    run, _, _ = recipe_run
    ref = {r["layer"]: float(r["value"]) for r in scores(run, "mnet") if int(r["epoch"]) == 2}
    assert set(ref) == {"features.1", "features.3"} and min(ref.values()) > 0
    top = max(ref.values())
    first, second = (max(0.05, ref[k] / top) for k in ("features.1", "features.3"))
    for e in (1, 2):
        recipe = torch.load(run / f"results/checkpoints/prop/colours/epoch_{e}.pt", weights_only=True)["recipe"]
        assert recipe["lr_from"]["distances"] == ref and recipe["lr_from"]["floor"] == 0.05
        scale = recipe["lr_scale"]
        assert scale["features.0"] == scale["features.1"] == pytest.approx(first, rel=1e-12)
        assert scale["features.2"] == scale["features.3"] == scale["features.18"] == pytest.approx(second, rel=1e-12)
        assert scale["classifier.1"] == 1.0
    groups = torch.load(run / "results/checkpoints/prop/colours/epoch_2.resume.pt",
                        weights_only=True)["optimizer"]["param_groups"]
    lr = yaml.safe_load((run / "recipes.yaml").read_text())["training"]["lr"]
    assert sorted(g["lr"] for g in groups) == pytest.approx(sorted({lr * first, lr * second, lr}))


def test_the_recipe_table_and_the_summary_compare_the_recipes(recipe_run):
    run, _, _ = recipe_run
    with open(run / "results/tables/recipes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    recipes = {r["model"]: r["recipe"] for r in rows}
    assert recipes == {"mnet": "full", "frozen": "freeze features.0, features.1",
                       "prop": "distance-proportional (from mnet)"}
    avg = {r["model"]: r for r in rows if r["layer"] == "(layer average)"}
    assert avg["mnet"]["diff_full"] == "" and float(avg["frozen"]["ci_low"]) <= float(avg["frozen"]["distance"])
    assert (run / "results/figures/recipes.png").stat().st_size > 0
    summary = (run / "results/summary.md").read_text()
    assert "LP-FT and freezing change features less than full fine-tuning" in summary
    assert "distance-proportional recipe beats uniform fine-tuning" in summary
    assert re.search(r"frozen \(freeze features.0, features.1\) [0-9.]+, full fine-tuning \(mnet\)", summary)


def test_a_recipe_change_reruns_only_that_recipe_a_reference_change_its_dependents(recipe_run, tmp_path):
    run, config, _ = recipe_run
    data = yaml.safe_load(config.read_text())
    data["models"]["frozen"]["training"]["freeze"] = ["features.0"]
    changed = tmp_path / "frozen.yaml"
    changed.write_text(yaml.safe_dump(data))
    jobs = dry_jobs(run, changed)
    assert {w["model"] for r, w in jobs if "model" in w} == {"frozen"}, "only the changed recipe's jobs"
    assert epochs_of(jobs, "finetune_epoch") == [1, 2], "its epoch 0 (the source model) is kept"
    readers = {"table1": 1, "recipes": 1, "visualize": 1, **READERS}
    assert counts(jobs) == {"finetune_epoch": 2, "extract": 2, "layer_stats": 2, "score": 1, **readers}, counts(jobs)

    data = yaml.safe_load(config.read_text())
    data["models"]["mnet"]["training"] = {"lr": 5e-4}  # the reference run changes
    changed = tmp_path / "reference.yaml"
    changed.write_text(yaml.safe_dump(data))
    jobs = dry_jobs(run, changed)
    trained = sorted((w["model"], int(w["epoch"])) for r, w in jobs if r == "finetune_epoch")
    assert trained == [("mnet", 1), ("mnet", 2), ("prop", 1), ("prop", 2)], trained

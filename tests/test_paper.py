"""The paper presets: every stated hyperparameter, the authors' code settings, and the 3 x 3 grid's DAG."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from featdyn import FeatdynError
from featdyn.spec.config import analysed_epochs, check, dataset_roots, with_defaults
from featdyn.spec.hyperparams import training_config

from conftest import REPO, SNAKEFILE, VENV_BIN, make_tree

PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
CODE = yaml.safe_load((REPO / "config" / "paper_code.yaml").read_text())
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def merged(*configs: dict) -> dict:
    """Config files merged as Snakemake merges several --configfile arguments."""
    out: dict = {}
    for c in configs:
        update_config(out, copy.deepcopy(c))
    return out


def tiny_trees(root: Path, cfg: dict) -> None:
    """Generated class-per-folder trees wherever the preset expects the real datasets."""
    for name, spec in cfg["datasets"].items():
        for folder in dataset_roots(name, spec, f"results/data/{name}").values():
            make_tree(root / folder, classes=3, per_class=4, size=8)


def test_paper_preset_states_the_papers_hyperparameters():
    validate(copy.deepcopy(PAPER), SCHEMA)
    assert list(PAPER["models"]) == ["vgg19", "densenet121", "resnet50"]   # Table 1's rows
    assert list(PAPER["datasets"]) == ["15-scene", "awa2", "fruits360"]    # Table 1's columns
    assert {m["arch"] for m in PAPER["models"].values()} == {"vgg19", "resnet50", "densenet121"}
    assert all(m["weights"] == "IMAGENET1K_V1" and m["layers"] == "preset" for m in PAPER["models"].values())
    assert PAPER["image_size"] == 224
    for model in PAPER["models"]:
        for dataset in PAPER["datasets"]:
            t = training_config(PAPER, model, dataset)
            assert (t["optimizer"], t["batch_size"], t["epochs"], t["grad_clip"], t["weight_decay"]) == \
                ("adam", 196, 15, 0.5, 0.0)
            assert t["lr"] == (1e-3 if dataset == "fruits360" else 1e-4)
            assert (tuple(t["mean"]), tuple(t["std"])) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            assert analysed_epochs(with_defaults(PAPER), model, dataset) == list(range(16))
    assert PAPER["split"] == {"test_fraction": 0.2, "seed": 42}
    fruits = PAPER["datasets"]["fruits360"]
    assert (fruits["classes"], fruits["class_seed"]) == (20, 112)
    assert fruits["train"].endswith("Training") and fruits["test"].endswith("Test")
    assert {"path"} == set(PAPER["datasets"]["15-scene"]) == set(PAPER["datasets"]["awa2"])


def test_paper_code_overlay_gives_the_authors_code_settings():
    cfg = merged(PAPER, CODE)
    validate(copy.deepcopy(cfg), SCHEMA)
    for model in cfg["models"]:
        for dataset in cfg["datasets"]:
            t = training_config(cfg, model, dataset)
            assert (t["batch_size"], t["lr"], t["epochs"], t["grad_clip"]) == (32, 5e-5, 15, 0.5)
            assert analysed_epochs(with_defaults(cfg), model, dataset) == [0, 1, 3, 5, 7, 10, 15]
    assert cfg["datasets"]["fruits360"]["classes"] == 20, "the overlay keeps the rest of the preset"


def test_paper_preset_names_missing_datasets(tmp_path):
    with pytest.raises(FeatdynError) as err:
        check(PAPER, base=tmp_path)
    for key in ("datasets.15-scene.path", "datasets.awa2.path", "datasets.fruits360.train",
                "datasets.fruits360.test"):
        assert key in str(err.value)


def dry_run(workdir: Path, *configfiles: Path) -> str:
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "-n", "--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.workflow
def test_paper_grid_dry_run_lists_every_epoch_checkpoint(tmp_path):
    tiny_trees(tmp_path, PAPER)  # the preset's own paths, filled with tiny generated trees
    (tmp_path / "config").mkdir()  # as in the repository: the demo config sits where Snakefile looks
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    out = dry_run(tmp_path, REPO / "config" / "paper.yaml")
    checkpoints = set(re.findall(r"results/checkpoints/([\w-]+)/([\w-]+)/epoch_(\d+)\.pt", out))
    expected = {(m, d, str(e)) for m in PAPER["models"] for d in PAPER["datasets"] for e in range(16)}
    assert checkpoints == expected  # 3 x 3 x (15 + 1)
    assert re.search(r"^finetune_epoch\s+144$", out, re.M)
    assert re.search(r"^extract\s+144$", out, re.M)
    assert "mobilenet_v2" not in out and "textures" not in out, "--configfile replaces the demo config"

    # The authors' code settings analyse epochs 0, 1, 3, 5, 7, 10, 15 but still train every epoch.
    out = dry_run(tmp_path, REPO / "config" / "paper.yaml", REPO / "config" / "paper_code.yaml")
    assert re.search(r"^finetune_epoch\s+144$", out, re.M)
    assert re.search(r"^extract\s+63$", out, re.M)
    stores = set(re.findall(r"results/activations/vgg19/awa2/epoch_(\d+)\.zarr", out))
    assert stores == {"0", "1", "3", "5", "7", "10", "15"}


def test_table1_follows_the_config_order_like_the_paper():
    import pandas as pd

    from featdyn.report.tables import table1, to_markdown

    rows = pd.DataFrame([{"model": m, "dataset": d, "epoch": e, "train_loss": 0.1, "test_loss": 0.2,
                          "train_acc": 80.0 + e + i, "test_acc": 70.0 + e + j}
                         for i, m in enumerate(PAPER["models"]) for j, d in enumerate(PAPER["datasets"])
                         for e in (0, 15)])
    t = table1(rows, list(PAPER["models"]), list(PAPER["datasets"]))
    assert list(t.index) == ["vgg19", "densenet121", "resnet50"]
    assert list(t.columns) == ["15-scene", "awa2", "fruits360"]
    assert t.loc["densenet121", "fruits360"] == "96.00 / 87.00"  # the last epoch: 80 + 15 + 1, 70 + 15 + 2
    md = to_markdown(t, "Table 1")
    assert md.splitlines()[2] == "| model | 15-scene | awa2 | fruits360 |"

"""The real pipeline: real Snakemake, real torch training, real Zarr stores, on tiny data."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts, snakemake, tiny_config

pytestmark = pytest.mark.workflow


def test_demo_dry_run_lists_every_stage():
    proc = snakemake(REPO, "-n", "--forceall", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    for rule in ["materialise_demo", "prepare_dataset", "fetch_weights", "finetune_epoch", "extract",
                 "source_stats", "layer_stats", "score", "table1", "table2", "metric_correlation",
                 "similarity_curves"]:
        assert rule in out, f"rule {rule} missing from the demo DAG:\n{out}"


def test_tiny_pipeline_end_to_end(tiny_run, tmp_path):
    # the shared complete run, copied: the dry runs below must not touch it
    shutil.copytree(tiny_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    t1 = pd.read_csv(tmp_path / "results/tables/table1_accuracy.csv")
    assert list(t1["epoch"]) == [0, 1, 2]
    assert t1[["train_acc", "test_acc"]].apply(lambda s: s.between(0, 100)).all().all()
    t2 = pd.read_csv(tmp_path / "results/tables/table2_reusability.csv")
    assert list(t2.columns[:5]) == ["model", "dataset", "metric", "mean", "std"]
    assert set(t2["metric"]) == {"procrustes", "pwsm", "procrustes_f", "cka_f"}
    assert (t2["mean"] > 0).all(), "fine-tuning with lr 1e-3 must move the features away from the source"
    scores = pd.read_csv(tmp_path / "results/scores/procrustes/mnet/colours.csv")
    assert set(scores["comparison"]) == {"source", "permutation"}, "one replicate: no floor, the null beside"
    scores = scores[scores["comparison"] == "source"]
    assert scores[scores["epoch"] == 0]["value"].abs().max() < 1e-9, "epoch 0 is the source model itself"
    assert (tmp_path / "results/figures/similarity_mnet.png").stat().st_size > 10_000
    # filter granularity: per-(layer, class, filter) tables per epoch, layer means in the tidy table
    filt = pd.read_csv(tmp_path / "results/scores/procrustes_f/mnet/colours.csv")
    assert (filt["granularity"] == "filter").all() and len(filt) == 2 * 3
    assert filt[filt["epoch"] == 0]["value"].abs().max() < 1e-9
    per_filter = pd.read_csv(tmp_path / "results/filters/cka_f/mnet/colours/epoch_2.csv")
    assert {"class", "filter", "images", "skipped"} <= set(per_filter.columns)
    assert per_filter["class"].nunique() == 2 and per_filter["value"].notna().any()
    corr = pd.read_csv(tmp_path / "results/tables/metric_correlation.csv")
    assert set(corr["reading"]) == {"layers_epochs", "filters_per_class"}
    log = (tmp_path / "results/logs/finetune_epoch/mnet/colours/epoch_1.log").read_text()
    assert "img/s" in log and "epoch 1" in log

    # Changing one metric's parameters reruns only that metric and what reads it.
    cfg2 = tiny_config(tmp_path / "cfg2")
    data = yaml.safe_load(cfg2.read_text())
    data["metrics"]["pwsm"]["alpha"] = 0.25
    data["datasets"]["colours"]["path"] = "data/colours"
    cfg2.write_text(yaml.safe_dump(data))
    dry = snakemake(tmp_path, "--configfile", str(cfg2), "-n", "--quiet", "rules").stdout
    assert "score" in dry and "table2" in dry
    for rule in ("finetune_epoch", "extract", "layer_stats", "prepare_dataset", "filter_scores"):
        assert rule not in dry, f"{rule} would rerun after a metric change:\n{dry}"
    assert job_counts(dry)["score"] == 1

    # Changing a filter metric reruns its per-epoch filter jobs and its score, nothing upstream.
    data["metrics"]["pwsm"]["alpha"] = 0.5
    data["metrics"]["cka_f"]["kind"] = "procrustes"
    cfg2.write_text(yaml.safe_dump(data))
    counts = job_counts(snakemake(tmp_path, "--configfile", str(cfg2), "-n", "--quiet", "rules").stdout)
    assert counts.get("filter_scores") == 3 and counts.get("score") == 1, counts
    for rule in ("finetune_epoch", "extract", "layer_stats", "source_stats"):
        assert rule not in counts, f"{rule} would rerun after a filter metric change: {counts}"


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = tiny_config(tmp_path, models={"m": {"arch": "resnet5O"}})
    proc = snakemake(tmp_path, "--configfile", str(cfg), "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "models.m.arch" in proc.stderr + proc.stdout and "resnet50" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_missing_dataset_folder_is_named(tmp_path):
    cfg = tiny_config(tmp_path, datasets={"gone": {"path": "data/nowhere"}})
    proc = snakemake(tmp_path, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "datasets.gone.path" in proc.stderr + proc.stdout and "data/nowhere" in proc.stderr + proc.stdout


def test_wrong_type_is_named(tmp_path):
    cfg = tiny_config(tmp_path, image_size="big")
    proc = snakemake(tmp_path, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "image_size" in proc.stderr + proc.stdout

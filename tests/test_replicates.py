"""Training replicates and the noise floor: seeds and paths of replicates, the between-replicate
rows and the permutation null against direct computations on the stores of a real two-replicate
tiny run, what raising `replicates` reruns, and the findings on constructed tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from featdyn import FeatdynError
from featdyn.engine.bootstrap import Replicates, seed_interval
from featdyn.report.correlation import COLUMNS
from featdyn.report.findings import FAILS, HOLDS, NOT_COVERED, RunNumbers, check_epochs, noise_floor
from featdyn.report.replicas import source_rows
from featdyn.report.tables import table2
from featdyn.spec.config import training_config
from featdyn.spec.replicates import rep_index, rep_suffix, replicate_pairs, replicate_seed, replicates_of

from conftest import snakemake, tiny_config

LAYERS = ["features.1", "features.3"]


# -- seeds, paths, config ---------------------------------------------------------------------------

def test_replicate_0_keeps_the_seed_and_others_get_their_own():
    assert replicate_seed(7, 0) == 7
    seeds = {replicate_seed(7, r) for r in range(1, 6)}
    assert len(seeds) == 5 and 7 not in seeds and all(0 <= s < 2**31 for s in seeds)
    assert replicate_seed(7, 1) != replicate_seed(8, 1)
    assert [rep_suffix(r) for r in range(3)] == ["", "/rep1", "/rep2"]
    assert [rep_index(rep_suffix(r)) for r in range(3)] == [0, 1, 2]
    with pytest.raises(FeatdynError):
        rep_index("/replica1")
    assert replicate_pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_replicates_are_overridden_like_training_and_change_only_the_seed():
    cfg = {"seed": 3, "replicates": 2, "models": {"m": {"arch": "x", "replicates": 3}},
           "datasets": {"d": {"path": "p"}, "e": {"path": "q", "replicates": 4}}, "training": {"lr": 0.1}}
    assert replicates_of(cfg, "m", "d") == 3 and replicates_of(cfg, "m", "e") == 4
    assert replicates_of({"models": {"m": {}}, "datasets": {"d": {}}}, "m", "d") == 1
    t0, t1 = training_config(cfg, "m", "d"), training_config(cfg, "m", "d", 1)
    assert t0["seed"] == 3 and t1["seed"] == replicate_seed(3, 1)
    assert {k: v for k, v in t0.items() if k != "seed"} == {k: v for k, v in t1.items() if k != "seed"}
    with pytest.raises(FeatdynError, match="replicates"):
        replicates_of({"replicates": 0, "models": {"m": {}}, "datasets": {"d": {}}}, "m", "d")


# -- intervals over images and seeds ------------------------------------------------------------------

def test_the_seed_interval_widens_by_students_t_and_is_unchanged_for_one_replicate():
    lo, hi = seed_interval(0.9, 1.1, 1.0, None, 0.95)
    assert (float(lo), float(hi)) == (0.9, 1.1)
    lo, hi = seed_interval(0.9, 1.1, 1.0, np.array([1.0, 1.2]), 0.95)
    w = 12.7062047 * np.std([1.0, 1.2], ddof=1) / np.sqrt(2)
    assert np.isclose(hi - 1.0, np.hypot(0.1, w), rtol=1e-6) and np.isclose(1.0 - lo, np.hypot(0.1, w), rtol=1e-6)


def constructed(ratio_to_spread: float, k: int = 3, spread: float = 0.01) -> RunNumbers:
    """One run whose layer-averaged distance rises from epoch 1 to 2 by ``ratio_to_spread`` times
    the training replicates' spread (the image resamples are tight)."""
    rng = np.random.default_rng(0)
    rise = ratio_to_spread * spread
    layers, epochs = ["l0", "l1"], [0, 1, 2]
    seeds = np.zeros((k, 2, 3))
    for r in range(k):
        seeds[r, :, 1] = 0.2 + spread * rng.standard_normal()
        seeds[r, :, 2] = 0.2 + rise + spread * rng.standard_normal()
    mean = seeds.mean(axis=0)
    values = mean[None] + 1e-4 * rng.standard_normal((200, 2, 3))
    values[:, :, 0] = 0
    rows = [dict(model="m", dataset="d", metric="procrustes", kind="procrustes", granularity="layer",
                 layer=layer, layer_index=li, epoch=e, value=seeds[r, li, ei], comparison="source", replicate=r,
                 other=np.nan, floor=spread, ratio=seeds[r, li, ei] / spread, null=0.9)
             for r in range(k) for li, layer in enumerate(layers) for ei, e in enumerate(epochs)]
    scores = source_rows(pd.DataFrame(rows))
    reps = {("procrustes", "m", "d"): Replicates(values, layers, epochs, 0.95, "centred", seeds)}
    return RunNumbers(scores=scores, replicates=reps, table2=table2(scores, reps),
                      correlation=pd.DataFrame(columns=COLUMNS), models={"m": "mobilenet_v2"}, datasets=["d"],
                      metrics=["procrustes"])


def test_a_difference_inside_the_training_noise_does_not_hold_one_outside_does():
    inside, outside = constructed(0.5), constructed(40.0)
    assert [c.verdict for c in check_epochs(inside).cases] == [FAILS]
    assert [c.verdict for c in check_epochs(outside).cases] == [HOLDS]
    # without the seeds, the same small rise clears the (tight) interval over the images alone
    alone = constructed(0.5)
    key = ("procrustes", "m", "d")
    alone.replicates[key] = Replicates(alone.replicates[key].values, ["l0", "l1"], [0, 1, 2], 0.95)
    rise = check_epochs(alone).cases[0]
    assert rise.verdict == (HOLDS if float(rise.evidence.split("change ")[1].split()[0]) > 0 else FAILS)
    lines = noise_floor(outside)
    assert lines[0].startswith("m × d: procrustes: distance to the source at the last epoch (2), deep layer (l1)")
    assert "times the replicate-to-replicate distance (0.010)" in lines[0]
    t2 = outside.table2
    assert t2["replicates"].iloc[0] == 3 and np.isfinite(t2["spread"].iloc[0])


def test_with_one_replicate_the_summary_says_training_noise_is_not_covered():
    rows = [dict(model="m", dataset="d", metric="procrustes", kind="procrustes", granularity="layer", layer="l0",
                 layer_index=0, epoch=e, value=0.1 * e, comparison="source", replicate=0, other=np.nan,
                 floor=np.nan, ratio=np.nan, null=np.nan) for e in range(3)]
    scores = source_rows(pd.DataFrame(rows))
    assert scores["value"].tolist() == [0.0, 0.1, 0.2]
    run = RunNumbers(scores=scores, replicates={}, table2=table2(scores), correlation=pd.DataFrame(columns=COLUMNS),
                     models={"m": "mobilenet_v2"}, datasets=["d"], metrics=["procrustes"])
    assert noise_floor(run) == [NOT_COVERED] and "not covered" in NOT_COVERED


# -- a real run of two replicates ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_replicates(tmp_path_factory, offline_torch_home) -> Path:
    """The tiny run with two training replicates (three layer metrics and a filter metric, one epoch:
    ~1.5 min on 2 idle cores)."""
    workdir = tmp_path_factory.mktemp("two_replicates")
    cfg = tiny_config(workdir, replicates=2, metrics={"procrustes": {"kind": "procrustes"},
                                                      "cka": {"kind": "cka"}, "cca": {"kind": "cca"},
                                                      "cka_f": {"kind": "cka", "granularity": "filter"}},
                      training={"epochs": 1, "batch_size": 8, "lr": 1e-3}, bootstrap={"resamples": 20, "groups": 3},
                      permutation_null={"permutations": 2, "seed": 0})
    snakemake(workdir, "--configfile", str(cfg), "--cores", "2")
    return workdir


def _store(run: Path, rep: str, epoch: int):
    from featdyn.data.stores import open_store

    return open_store(run / f"results/activations/mnet/colours{rep}/epoch_{epoch}.zarr")


def _rows(store, layer: str) -> np.ndarray:
    from featdyn.engine.stats import rows_of

    return rows_of(store.read(layer, 0, store.n)).numpy().astype(np.float64)


@pytest.mark.workflow
def test_replicates_differ_only_in_the_head_at_epoch_0_and_train_apart(two_replicates):
    import torch

    base = two_replicates / "results/checkpoints/mnet/colours"
    a, b = (torch.load(p, map_location="cpu", weights_only=False) for p in (base / "epoch_0.pt", base / "rep1/epoch_0.pt"))
    assert a["seed"] == 0 and b["seed"] == replicate_seed(0, 1)
    state_a, state_b = a["model"], b["model"]
    differ = [k for k in state_a if torch.is_tensor(state_a[k]) and not torch.equal(state_a[k], state_b[k])]
    assert differ and all(k.startswith("classifier") for k in differ), differ
    scores = pd.read_csv(two_replicates / "results/scores/procrustes/mnet/colours.csv")
    between = scores[scores["comparison"] == "replicates"]
    assert set(between["epoch"]) == {0, 1} and set(between["layer"]) == set(LAYERS)
    assert between[between["epoch"] == 0]["value"].abs().max() < 1e-9, "epoch 0: the same backbone in both"
    assert (between[between["epoch"] == 1]["value"] > 1e-6).all(), "two seeds train apart"
    src = scores[(scores["comparison"] == "source") & (scores["epoch"] == 1)]
    assert sorted(set(src["replicate"])) == [0, 1]
    assert np.allclose(src["ratio"], src["value"] / src["floor"])
    cka = pd.read_csv(two_replicates / "results/scores/cka/mnet/colours.csv")
    assert cka[(cka["comparison"] == "replicates") & (cka["epoch"] == 0)]["value"].abs().max() < 1e-9


@pytest.mark.workflow
def test_a_filter_metric_has_its_floor_from_the_two_stores(two_replicates):
    from featdyn.engine.similarity import filter_scores_from_stores

    scores = pd.read_csv(two_replicates / "results/scores/cka_f/mnet/colours.csv")
    between = scores[scores["comparison"] == "replicates"]
    assert len(between) == 2 * 2 and between[between["epoch"] == 0]["value"].abs().max() < 1e-9
    base = two_replicates / "results/activations/mnet/colours"
    direct, _ = filter_scores_from_stores(base / "epoch_1.zarr", base / "rep1/epoch_1.zarr",
                                          {"kind": "cka", "granularity": "filter"}, model="mnet", dataset="colours",
                                          metric="cka_f", source_attrs={"epoch": 1})
    for layer in LAYERS:
        rows = direct[direct["layer"] == layer]
        want = rows.groupby("filter")["value"].mean().mean()  # class means, then the layer's mean over filters
        got = between[(between["epoch"] == 1) & (between["layer"] == layer)]["value"].iloc[0]
        assert got == pytest.approx(want, rel=1e-9), layer
    src = scores[(scores["comparison"] == "source") & (scores["epoch"] == 1)]
    assert src["floor"].notna().all() and np.allclose(src["ratio"], src["value"] / src["floor"])


@pytest.mark.workflow
def test_between_replicate_rows_and_the_null_equal_direct_computations(two_replicates):
    from featdyn.engine.metrics import distance
    from featdyn.engine.noise import permutations

    for metric in ("procrustes", "cka", "cca"):
        scores = pd.read_csv(two_replicates / f"results/scores/{metric}/mnet/colours.csv")
        for layer in LAYERS:
            x, y = _rows(_store(two_replicates, "", 1), layer), _rows(_store(two_replicates, "/rep1", 1), layer)
            row = scores[(scores["comparison"] == "replicates") & (scores["layer"] == layer) & (scores["epoch"] == 1)]
            assert len(row) == 1 and np.isclose(row["value"].iloc[0], distance(metric, x, y, device="cpu"),
                                                 rtol=1e-9, atol=1e-10), (metric, layer)
            # the null: the source store's layer against itself, probe images permuted (whole images)
            store = _store(two_replicates, "", 0)
            maps = store.read(layer, 0, store.n)
            null = scores[(scores["comparison"] == "permutation") & (scores["layer"] == layer)].sort_values("replicate")
            assert len(null) == 2
            for p, perm in enumerate(permutations(store.n, 2, 0)):
                from featdyn.engine.stats import rows_of

                direct = distance(metric, rows_of(maps).double().numpy(), rows_of(maps[perm]).double().numpy(),
                                  device="cpu")
                assert np.isclose(null["value"].iloc[p], direct, rtol=1e-9, atol=1e-10), (metric, layer, p)
            src = scores[(scores["comparison"] == "source") & (scores["layer"] == layer)]
            assert np.allclose(src["null"], null["value"].mean())
    summary = (two_replicates / "results/summary.md").read_text()
    assert "times the replicate-to-replicate distance" in summary and NOT_COVERED not in summary
    t2 = pd.read_csv(two_replicates / "results/tables/table2_reusability.csv")
    assert (t2["replicates"] == 2).all() and t2["spread"].notna().all()
    assert "(seeds ±" in (two_replicates / "results/tables/table2_reusability.md").read_text()


@pytest.mark.workflow
def test_raising_replicates_runs_only_the_new_chain_and_its_readers(two_replicates, tmp_path):
    from test_reruns import counts, dry_jobs

    run = tmp_path / "run"
    shutil.copytree(two_replicates, run, symlinks=True)
    config = run / "config.yaml"
    assert dry_jobs(run, config) == [], "a complete run has nothing left to do"
    data = yaml.safe_load(config.read_text())
    data["replicates"] = 3
    changed = run / "three.yaml"
    changed.write_text(yaml.safe_dump(data))
    jobs = dry_jobs(run, changed)
    # the new chain (epochs 0 and 1), its pairs with replicates 0 and 1 at both epochs, then the readers
    assert counts(jobs) == {"finetune_epoch": 2, "extract": 2, "source_stats": 1, "layer_stats": 2,
                            "filter_scores": 2, "replicate_stats": 4, "replicate_filter_scores": 4, "score": 4,
                            "table1": 1, "table2": 1, "metric_correlation": 1, "similarity_curves": 1,
                            "findings": 1, "all": 1}, counts(jobs)
    assert {w.get("rep") for r, w in jobs if r == "finetune_epoch"} == {"/rep2"}


@pytest.mark.workflow
def test_one_replicate_reruns_nothing_and_keeps_its_paths(tiny_run, tmp_path):
    from test_reruns import dry_jobs

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["replicates"] = 1  # the default, said explicitly
    explicit = run / "one.yaml"
    explicit.write_text(yaml.safe_dump(data))
    assert dry_jobs(run, explicit) == []
    assert not list((run / "results/checkpoints/mnet/colours").glob("rep*"))
    scores = pd.read_csv(run / "results/scores/procrustes/mnet/colours.csv")
    assert set(scores["comparison"]) == {"source", "permutation"} and scores["floor"].isna().all()
    assert NOT_COVERED in (run / "results/summary.md").read_text()


@pytest.mark.workflow
def test_the_disk_plan_counts_every_replicate(two_replicates):
    from featdyn.nets.disk import DatasetSize, estimate
    from featdyn.spec.config import with_defaults

    config = with_defaults(yaml.safe_load((two_replicates / "config.yaml").read_text()))
    stages = {s.stage: s for s in estimate(config, {"colours": DatasetSize(images=24, classes=2)})}
    results = two_replicates / "results/checkpoints"
    for stage, pattern in [("checkpoints (weights of every epoch)", "epoch_?.pt"),
                           ("resume states (optimizer)", "*.resume.pt")]:
        real = sum(p.stat().st_size for p in results.rglob(pattern) if p.is_file())
        assert len(list(results.rglob(pattern))) >= 2 and abs(stages[stage].kept - real) < 0.05 * real, \
            (stage, stages[stage].kept, real)


def test_similarity_curves_draw_the_replicates_spread_and_the_floor(tmp_path):
    from featdyn.report.figures import similarity_curves

    scores = constructed(40.0).scores
    fig = similarity_curves(scores, "m", tmp_path / "s.png", tmp_path / "s.pdf", datasets=["d"])
    ax = fig.axes[0]
    floors = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(floors) == 2, "one dotted noise-floor line per layer"
    assert np.allclose(floors[0].get_ydata(), 0.01)
    assert len(ax.collections) == 2, "one band of the replicates' spread per layer"

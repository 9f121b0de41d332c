"""Bootstrap over the probe images: per-group statistics, exactness against a direct resampling of
the raw activations, intervals (contain the estimate, shrink with more images, reproducible),
the store-to-score path, and which jobs a change reruns after a complete tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from featdyn import FeatdynError
from featdyn.engine.bootstrap import (
    BootstrapSpec,
    FilterGroups,
    Replicates,
    bootstrap_interval,
    layer_replicates,
    load_filter_groups,
    percentile_interval,
    resample_weights,
    save_filter_groups,
)
from featdyn.engine.filterwise import FilterAccumulator
from featdyn.engine.metrics import from_stats
from featdyn.engine.stats import (
    GroupAccumulator,
    GroupStats,
    image_groups,
    load_group_pairs,
    load_group_sides,
    pair_stats,
    rows_of,
    save_group_pairs,
    save_group_sides,
)

from conftest import job_counts, snakemake
from metric_reference import REFERENCES, single_thread  # noqa: F401

KINDS = {"procrustes": {}, "pwsm": {"alpha": 0.5}, "cka": {}, "cca": {}}


def maps(n: int, c: int = 4, hw: int = 3, noise: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) ReLU-like source maps and a perturbed fine-tuned version, with non-zero means."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, c, hw, hw)), 0) + 2.0
    mix = rng.normal(size=(c, c)) + 2 * np.eye(c)
    y = np.einsum("nchw,cd->ndhw", x, mix) + noise * rng.normal(size=x.shape) + 5.0
    return x, y


def grouped_pairs(x: np.ndarray, y: np.ndarray, groups: int, block: int = 5):
    """Per-group PairStats as the workflow builds them: source sides first (own pass), then the
    epoch's groups with the source's shift and no X Gram matrix, joined to the source sides."""
    ids = image_groups(len(x), groups)
    src = GroupAccumulator(ids)
    for s in range(0, len(x), block):
        src.update(s, x[s:s + block])
    sides = src.sides()
    tgt = GroupAccumulator(ids, x_shift=sides[0].shift, x_gram=False)
    for s in range(0, len(x), block):
        tgt.update(s, x[s:s + block], y[s:s + block])
    pairs = tgt.pairs()
    for p, side in zip(pairs, sides):
        p.x = side
    return ids, pairs


def resampled_images(ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The images of the multiset that takes group g w[g] times."""
    return np.concatenate([np.tile(np.flatnonzero(ids == g), int(k)) for g, k in enumerate(w)])


def test_groups_are_interleaved_and_capped():
    np.testing.assert_array_equal(image_groups(7, 3), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(image_groups(4, 16), [0, 1, 2, 3])  # one image per group
    with pytest.raises(FeatdynError, match="groups"):
        image_groups(5, 0)


def test_group_statistics_add_up_to_the_whole_probe_set():
    x, y = maps(13)
    _, pairs = grouped_pairs(x, y, 4)
    whole = pair_stats(x, y).centered()
    for got, want in zip(GroupStats.stack(pairs).weighted(np.ones(4)).centered(), whole):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("groups", [12, 4])
@pytest.mark.parametrize("kind", list(KINDS))
def test_replicates_equal_a_direct_resampling_of_the_raw_activations(kind, groups):
    """groups = N: the classical bootstrap over images; groups < N: over groups of images. Either
    way a replicate is the metric of the resampled activations, checked against the independent
    SVD reference on the rows of the resampled maps."""
    x, y = maps(12, c=3, hw=4)
    ids, pairs = grouped_pairs(x, y, groups)
    weights = resample_weights(len(pairs), 6, seed=3, key="d")
    reps = layer_replicates(pairs, weights, kind, KINDS[kind])
    for w, got in zip(weights, reps):
        idx = resampled_images(ids, w)
        xr, yr = rows_of(x[idx]).numpy(), rows_of(y[idx]).numpy()
        assert got == pytest.approx(REFERENCES[kind](xr, yr, **KINDS[kind]), abs=1e-9)


def test_weights_are_reproducible_per_dataset_and_independent_across_datasets():
    a = resample_weights(8, 50, seed=0, key="textures")
    assert a.shape == (50, 8) and (a.sum(1) == 8).all() and a.min() >= 0
    np.testing.assert_array_equal(a, resample_weights(8, 50, seed=0, key="textures"))
    assert not np.array_equal(a, resample_weights(8, 50, seed=1, key="textures"))
    assert not np.array_equal(a, resample_weights(8, 50, seed=0, key="digits"))


def interval_of(n: int, groups: int = 16, resamples: int = 200, seed: int = 0) -> tuple[float, float, float]:
    x, y = maps(n, c=4, hw=3, noise=1.0, seed=7)
    _, pairs = grouped_pairs(x, y, groups)
    point = from_stats("procrustes", pair_stats(x, y))
    reps = layer_replicates(pairs, resample_weights(len(pairs), resamples, seed, "d"), "procrustes", {})
    lo, hi = percentile_interval(reps, 0.95)
    return point, float(lo), float(hi)


def test_intervals_contain_the_estimate_shrink_with_more_images_and_are_seeded():
    small, large = interval_of(16), interval_of(256)
    for point, lo, hi in (small, large):
        assert lo <= point <= hi
    # the centred interval: the percentile interval moved onto the estimate by the resamples' bias
    samples = np.array([0.1, 0.2, 0.3, 0.4, 1.0])
    lo, hi = bootstrap_interval(samples, 0.5, 0.5, "centred")
    plo, phi = percentile_interval(samples, 0.5)
    assert (lo, hi) == pytest.approx((plo + 0.5 - 0.4, phi + 0.5 - 0.4))
    assert bootstrap_interval(samples, 0.5, 0.5, "percentile") == pytest.approx((plo, phi))
    # 16x the images: the interval should narrow by about 4x (sqrt(16)); ask for 2x
    assert (large[2] - large[1]) < 0.5 * (small[2] - small[1])
    assert interval_of(16, seed=5) == interval_of(16, seed=5)
    assert interval_of(16, seed=5) != interval_of(16, seed=6)


def test_percentile_interval_ignores_nan_replicates_and_needs_some():
    lo, hi = percentile_interval(np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [np.nan, np.nan]]), 0.5)
    assert lo[0] == pytest.approx(1.5) and hi[0] == pytest.approx(2.5) and np.isnan(lo[1]) and np.isnan(hi[1])
    lo, hi = percentile_interval(np.empty((0, 2)), 0.9)
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_spec_checks_its_keys():
    assert not BootstrapSpec.from_config({"resamples": 0}).enabled
    assert BootstrapSpec.from_config({"resamples": 0}).stored_groups == 0
    assert BootstrapSpec.from_config(None) == BootstrapSpec()
    with pytest.raises(FeatdynError, match="bootstrap.level"):
        BootstrapSpec.from_config({"level": 1.5})
    with pytest.raises(FeatdynError, match="bootstrap.groups"):
        BootstrapSpec.from_config({"groups": 1})
    with pytest.raises(FeatdynError, match="bootstrap.interval"):
        BootstrapSpec.from_config({"interval": "bca"})


def test_group_files_round_trip(tmp_path):
    x, y = maps(9)
    _, pairs = grouped_pairs(x, y, 3)
    save_group_sides(tmp_path / "s.npz", {"l@2": [p.x for p in pairs]})
    save_group_pairs(tmp_path / "e.npz", {"l@2": pairs})
    loaded = load_group_pairs(tmp_path / "e.npz", load_group_sides(tmp_path / "s.npz"))
    assert list(loaded) == ["l@2"] and len(loaded["l@2"]) == 3
    for got, want in zip(loaded["l@2"], pairs):
        for a, b in zip(got.centered(), want.centered()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FeatdynError, match="image groups"):
        load_group_pairs(tmp_path / "e.npz", {"l@2": [p.x for p in pairs[:2]]})


@pytest.mark.parametrize("kind", ["procrustes", "cka"])
def test_filter_replicates_equal_a_direct_resampling(kind, tmp_path):
    x, y = maps(10, c=3, hw=4)
    labels = np.repeat([0, 1, 2], [4, 3, 3])
    g = 4
    ids = image_groups(len(x), g)
    acc = FilterAccumulator(kind, method="svd", device="cpu")
    acc.update(x[:6], y[:6], labels[:6] * g + ids[:6])
    acc.update(x[6:], y[6:], labels[6:] * g + ids[6:])
    fg = FilterGroups.from_scores(acc.result(), g)
    plain = FilterAccumulator(kind, method="svd", device="cpu")
    plain.update(x, y, labels)
    whole = plain.result()
    np.testing.assert_allclose(fg.scores().class_means(), whole.class_means(), atol=1e-12)
    np.testing.assert_array_equal(fg.scores().counts, whole.counts)
    save_filter_groups(tmp_path / "f.npz", {"conv": fg})
    fg = load_filter_groups(tmp_path / "f.npz")["conv"]
    weights = resample_weights(g, 5, seed=1, key="d")
    for w, got in zip(weights, fg.replicates(weights)):
        idx = resampled_images(ids, w)
        direct = FilterAccumulator(kind, method="svd", device="cpu")
        direct.update(x[idx], y[idx], labels[idx])
        assert got == pytest.approx(direct.result().layer_value(), abs=1e-12)


def test_replicates_of_table_entries():
    values = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)  # (B, L, E), epochs 0, 1, 2
    reps = Replicates(values, ["a", "b"], [0, 1, 2], 0.9)
    np.testing.assert_allclose(reps.layer_average(), values.mean(1))
    np.testing.assert_allclose(reps.table2(), values.mean(1)[:, 1:].mean(1))
    np.testing.assert_allclose(reps.per_layer(), values[:, :, 1:].mean(2))


def test_store_to_scores_with_intervals(tmp_path):
    """Real Zarr stores: the per-group statistics of the workflow's jobs, then scores with
    ci_low <= value <= ci_high from the replicates."""
    from featdyn.data.stores import StoreWriter
    from featdyn.engine.similarity import (
        pair_group_stats_from_stores,
        score_layers_with_replicates,
        source_group_stats_from_store,
    )
    from featdyn.engine.stats import save_pairs, save_sides

    n = 12
    x, y = maps(n, c=3, hw=4)
    labels = np.arange(n) % 3
    for epoch, data in ((0, x), (1, y)):
        attrs = {"epoch": epoch, "probe_sha256": "p", "image_size": 32, "model": "m", "dataset": "d"}
        with StoreWriter(tmp_path / f"e{epoch}.zarr", n, ["conv"], attrs, chunk=5) as wr:
            for i in range(0, n, 5):
                wr.write(i, {"conv": data[i:i + 5].astype(np.float32)}, labels[i:i + 5], np.arange(i, min(i + 5, n)))
    spec = BootstrapSpec(resamples=50, groups=6)
    sides, gsides = source_group_stats_from_store(tmp_path / "e0.zarr", groups=spec.groups)
    save_sides(tmp_path / "source.npz", sides)
    save_group_sides(tmp_path / "source_g.npz", gsides)
    for e in (0, 1):
        pairs, gpairs = pair_group_stats_from_stores(tmp_path / "e0.zarr", tmp_path / f"e{e}.zarr", sides,
                                                     source_groups=gsides)
        save_pairs(tmp_path / f"p{e}.npz", pairs)
        save_group_pairs(tmp_path / f"g{e}.npz", gpairs)
    df, reps = score_layers_with_replicates(tmp_path / "source.npz", [tmp_path / "p0.npz", tmp_path / "p1.npz"], [0, 1],
                                            {"kind": "procrustes"}, model="m", dataset="d", metric="p", spec=spec,
                                            source_groups_file=tmp_path / "source_g.npz",
                                            group_files=[tmp_path / "g0.npz", tmp_path / "g1.npz"])
    assert reps.values.shape == (50, 1, 2)
    row = df[df["epoch"] == 1].iloc[0]
    want = REFERENCES["procrustes"](rows_of(x.astype(np.float32)).double().numpy(),
                                    rows_of(y.astype(np.float32)).double().numpy())
    assert row["value"] == pytest.approx(want, abs=1e-9)
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["ci_high"] > row["ci_low"]
    assert df[df["epoch"] == 0][["value", "ci_low", "ci_high"]].abs().max().max() < 1e-9


# -- the workflow: a complete tiny run, then what a change reruns ----------------------------------

@pytest.mark.workflow
def test_tiny_run_has_intervals_and_reruns_only_what_a_change_touches(tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    scores = pd.read_csv(tmp_path / "results/scores/pwsm/mnet/colours.csv")
    assert list(scores.columns[-2:]) == ["ci_low", "ci_high"]
    assert (scores["ci_low"] <= scores["ci_high"]).all() and scores["ci_low"].notna().all()
    assert (tmp_path / "results/stats/mnet/colours/groups/epoch_2.npz").is_file()
    assert (tmp_path / "results/filters/cka_f/mnet/colours/groups/epoch_2.npz").is_file()
    t2 = pd.read_csv(tmp_path / "results/tables/table2_reusability.csv")
    assert {"ci_low", "ci_high"} <= set(t2.columns) and t2["ci_low"].notna().all()
    assert ((t2["ci_low"] <= t2["mean"]) & (t2["mean"] <= t2["ci_high"])).all()

    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())

    def dry(change) -> dict[str, int]:
        data = yaml.safe_load(yaml.safe_dump(cfg))
        change(data)
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(data))
        return job_counts(snakemake(tmp_path, "--configfile", str(path), "-n", "--quiet", "rules").stdout)

    # nothing changed: nothing to do
    assert not dry(lambda c: None), "a complete run must be up to date"
    # one metric's parameter: only that metric's score job (and its bootstrap), then its readers
    counts = dry(lambda c: c["metrics"]["pwsm"].update(alpha=0.25))
    assert counts.get("score") == 1, counts
    for rule in ("layer_stats", "source_stats", "filter_scores", "extract", "finetune_epoch"):
        assert rule not in counts, f"{rule} would rerun after a metric change: {counts}"
    # the resamples, level or seed: every score job, no statistics job
    counts = dry(lambda c: c.update(bootstrap={"resamples": 50, "seed": 3}))
    assert counts.get("score") == 4 and "layer_stats" not in counts and "filter_scores" not in counts, counts
    # the groups: the statistics are kept per group, so their jobs rerun (extraction does not)
    counts = dry(lambda c: c.update(bootstrap={"groups": 3}))
    assert counts.get("layer_stats") == 3 and counts.get("filter_scores") == 6 and "extract" not in counts, counts

"""Both readings of the metric correlation against scipy.stats.pearsonr computed group by group."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from featdyn.report.correlation import COLUMNS, across_filters, across_layers_epochs, metric_correlation


def score_rows(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model, dataset, layer, epoch in itertools.product(["m1", "m2"], ["d1"], ["l1", "l2", "l3"], range(4)):
        base = 0.0 if epoch == 0 else rng.random()
        for metric, noise in (("procrustes", 0.0), ("cka", 0.2), ("pwsm", 1.0)):
            rows.append({"model": model, "dataset": dataset, "metric": metric, "kind": metric, "granularity": "layer",
                         "layer": layer, "layer_index": int(layer[1]), "epoch": epoch,
                         "value": base + noise * rng.random() * (epoch > 0)})
    return pd.DataFrame(rows)


def filter_rows(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for layer, epoch, cls in itertools.product(["l1", "l2"], range(3), range(3)):
        for f in range(6):
            shared = rng.random()
            for metric, noise in (("procrustes_f", 0.1), ("cka_f", 0.4)):
                value = 0.0 if epoch == 0 else shared + noise * rng.random()
                if (layer, epoch, cls, metric) == ("l2", 2, 1, "cka_f") and f >= 2:
                    value = np.nan  # only 2 filters valid: this group is undefined
                if (layer, epoch, cls) == ("l1", 1, 2):
                    value = 0.3     # constant vector: undefined
                rows.append({"model": "m", "dataset": "d", "metric": metric, "kind": metric[:-2], "layer": layer,
                             "layer_index": int(layer[1]), "epoch": epoch, "class": cls, "filter": f,
                             "value": value, "images": 3, "skipped": 0})
    return pd.DataFrame(rows)


def test_layers_epochs_reading_is_pearson_over_layers_and_epochs():
    scores = score_rows(np.random.default_rng(0))
    out = across_layers_epochs(scores)
    assert list(out.columns) == COLUMNS and set(out["reading"]) == {"layers_epochs"}
    for _, row in out.iterrows():
        sub = scores[scores["epoch"] >= 1]
        if row["model"] != "all":
            sub = sub[sub["model"] == row["model"]]
        a = sub[sub["metric"] == row["metric_a"]].sort_values(["model", "layer", "epoch"])["value"].to_numpy()
        b = sub[sub["metric"] == row["metric_b"]].sort_values(["model", "layer", "epoch"])["value"].to_numpy()
        assert row["r"] == pytest.approx(pearsonr(a, b).statistic, abs=1e-12)
        assert row["n"] == len(a) == (18 if row["model"] == "all" else 9)


def test_filters_reading_is_mean_and_std_of_per_class_correlations():
    filters = filter_rows(np.random.default_rng(1))
    out = across_filters(filters)
    assert set(out["reading"]) == {"filters_per_class"} and len(out) == 2  # 'all' and (m, d)
    rs, undefined = [], 0
    for (_layer, _epoch, _cls), g in filters[filters["epoch"] >= 1].groupby(["layer", "epoch", "class"]):
        a = g[g["metric"] == "cka_f"].set_index("filter")["value"]
        b = g[g["metric"] == "procrustes_f"].set_index("filter")["value"]
        ok = a.notna() & b.notna()
        if ok.sum() < 3 or a[ok].nunique() == 1 or b[ok].nunique() == 1:
            undefined += 1
            continue
        rs.append(pearsonr(a[ok], b[ok]).statistic)
    row = out[out["model"] == "all"].iloc[0]
    assert {row["metric_a"], row["metric_b"]} == {"cka_f", "procrustes_f"}
    assert row["r"] == pytest.approx(np.mean(rs), abs=1e-12)
    assert row["r_std"] == pytest.approx(np.std(rs), abs=1e-12)  # population std, as the authors printed
    assert row["n"] == len(rs) == 2 * 2 * 3 - 2 and row["undefined"] == undefined == 2


def test_metric_correlation_reports_both_readings_only_with_two_filter_metrics():
    rng = np.random.default_rng(2)
    scores, filters = score_rows(rng), filter_rows(rng)
    both = metric_correlation(scores, filters)
    assert set(both["reading"]) == {"layers_epochs", "filters_per_class"}
    one = metric_correlation(scores, filters[filters["metric"] == "cka_f"])
    assert set(one["reading"]) == {"layers_epochs"}
    assert set(metric_correlation(scores)["reading"]) == {"layers_epochs"}


def test_spearman_beside_pearson_in_both_readings_against_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    scores, filters = score_rows(rng), filter_rows(rng)
    out = metric_correlation(scores, filters)
    for _, row in out[out["reading"] == "layers_epochs"].iterrows():
        sub = scores[scores["epoch"] >= 1]
        if row["model"] != "all":
            sub = sub[sub["model"] == row["model"]]
        a = sub[sub["metric"] == row["metric_a"]].sort_values(["model", "layer", "epoch"])["value"].to_numpy()
        b = sub[sub["metric"] == row["metric_b"]].sort_values(["model", "layer", "epoch"])["value"].to_numpy()
        assert row["rho"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    rhos = []
    for _, g in filters[filters["epoch"] >= 1].groupby(["layer", "epoch", "class"]):
        a = g[g["metric"] == "cka_f"].set_index("filter")["value"]
        b = g[g["metric"] == "procrustes_f"].set_index("filter")["value"]
        ok = a.notna() & b.notna()
        if ok.sum() >= 3 and a[ok].nunique() > 1 and b[ok].nunique() > 1:
            rhos.append(spearmanr(a[ok], b[ok]).statistic)
    row = out[(out["reading"] == "filters_per_class") & (out["model"] == "all")].iloc[0]
    assert row["rho"] == pytest.approx(np.mean(rhos), abs=1e-12)
    assert row["rho_std"] == pytest.approx(np.std(rhos), abs=1e-12)


def test_undefined_layer_correlations_are_counted():
    scores = score_rows(np.random.default_rng(4))
    scores.loc[scores["metric"] == "pwsm", "value"] = 0.5  # a constant metric: r undefined
    out = across_layers_epochs(scores)
    with_pwsm = out[(out["metric_a"] == "pwsm") | (out["metric_b"] == "pwsm")]
    assert with_pwsm["r"].isna().all() and (with_pwsm["undefined"] == 1).all()
    assert (out.loc[out.index.difference(with_pwsm.index), "undefined"] == 0).all()


def test_r_interval_is_the_percentile_of_r_over_both_metrics_replicates():
    from featdyn.engine.bootstrap import Replicates, percentile_interval

    rng = np.random.default_rng(5)
    scores = score_rows(rng)
    reps = {}
    for (metric, model), g in scores.groupby(["metric", "model"]):
        g = g.sort_values(["layer", "epoch"])
        grid = g["value"].to_numpy().reshape(3, 4)
        reps[(metric, model, "d1")] = Replicates(grid[None] + 0.05 * rng.standard_normal((40, 3, 4)),
                                                 ["l1", "l2", "l3"], [0, 1, 2, 3], 0.9, "percentile")
    out = across_layers_epochs(scores, replicates=reps)
    row = out[(out["model"] == "m1") & (out["metric_a"] == "cka") & (out["metric_b"] == "procrustes")].iloc[0]
    a, b = reps[("cka", "m1", "d1")].values[:, :, 1:], reps[("procrustes", "m1", "d1")].values[:, :, 1:]
    rs = [pearsonr(a[i].ravel(), b[i].ravel()).statistic for i in range(40)]
    lo, hi = percentile_interval(np.array(rs), 0.9)
    assert row["r_ci_low"] == pytest.approx(lo, abs=1e-12) and row["r_ci_high"] == pytest.approx(hi, abs=1e-12)
    # 'all' pools the (layer, epoch) points of every model, replicate by replicate
    pooled = out[(out["model"] == "all") & (out["metric_a"] == "cka") & (out["metric_b"] == "procrustes")].iloc[0]
    both = [np.concatenate([reps[(m, mod, "d1")].values[:, :, 1:].reshape(40, -1) for mod in ("m1", "m2")], axis=1)
            for m in ("cka", "procrustes")]
    lo, hi = percentile_interval(np.array([pearsonr(both[0][i], both[1][i]).statistic for i in range(40)]), 0.9)
    assert pooled["r_ci_low"] == pytest.approx(lo, abs=1e-12) and pooled["r_ci_high"] == pytest.approx(hi, abs=1e-12)
    # centred: the same percentiles moved onto r (by r minus the replicates' mean), within [-1, 1]
    for _key, rep in reps.items():
        rep.method = "centred"
    centred = across_layers_epochs(scores, replicates=reps)
    crow = centred[(centred["model"] == "m1") & (centred["metric_a"] == "cka") & (centred["metric_b"] == "procrustes")]
    shift = crow["r"].iloc[0] - np.mean(rs)
    lo, hi = percentile_interval(np.array(rs), 0.9)
    assert crow["r_ci_low"].iloc[0] == pytest.approx(lo + shift, abs=1e-12)
    assert crow["r_ci_high"].iloc[0] == pytest.approx(min(hi + shift, 1.0), abs=1e-12)
    assert metric_correlation(scores)[["r_ci_low", "r_ci_high"]].isna().all().all()

"""Tables 1 and 2 and the metric agreement, from hand-made inputs with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from featdyn import FeatdynError
from featdyn.report.correlation import metric_correlation
from featdyn.report.tables import read_epoch_rows, table1, table2, table2_layout, to_markdown


def scores_frame(values: dict[tuple[str, int], list[float]], metric: str = "procrustes") -> pd.DataFrame:
    """values[(dataset, epoch)] = per-layer values."""
    rows = []
    for (dataset, epoch), vals in values.items():
        for i, v in enumerate(vals):
            rows.append(dict(model="m", dataset=dataset, metric=metric, kind=metric, granularity="layer",
                             layer=f"l{i}", layer_index=i, epoch=epoch, value=v))
    return pd.DataFrame(rows)


def test_table2_is_mean_and_sample_std_of_layer_averages_over_epochs_1_to_T():
    sc = scores_frame({("d", 0): [0.0, 0.0], ("d", 1): [0.1, 0.3], ("d", 2): [0.2, 0.4], ("d", 3): [0.6, 0.8]})
    t2 = table2(sc)
    averages = [0.2, 0.3, 0.7]  # epoch 0 excluded
    assert t2.loc[0, "mean"] == pytest.approx(np.mean(averages))
    assert t2.loc[0, "std"] == pytest.approx(np.std(averages, ddof=1))
    assert t2.loc[0, "epochs"] == 3
    assert list(t2.columns[:5]) == ["model", "dataset", "metric", "mean", "std"]
    assert "0.400 ± 0.265" in to_markdown(table2_layout(t2, "procrustes"), "t")


def test_table2_without_trained_epochs_is_an_error():
    with pytest.raises(FeatdynError, match="epoch >= 1"):
        table2(scores_frame({("d", 0): [0.0]}))


def test_table1_reads_rows_and_shows_the_last_epoch(tmp_path):
    paths = []
    for e, (tr, te) in enumerate([(10.0, 9.0), (50.0, 40.0), (90.5, 80.25)]):
        p = tmp_path / f"e{e}.json"
        p.write_text(json.dumps({"model": "m", "dataset": "d", "epoch": e, "train_loss": 1.0, "train_acc": tr,
                                 "test_loss": 1.0, "test_acc": te}))
        paths.append(p)
    rows = read_epoch_rows(reversed(paths))
    assert list(rows["epoch"]) == [0, 1, 2]
    assert table1(rows).loc["m", "d"] == "90.50 / 80.25"


def test_table1_names_an_unreadable_row(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FeatdynError, match="bad.json"):
        read_epoch_rows([bad])


def test_correlation_across_layers_and_epochs():
    rng = np.random.default_rng(0)
    a = rng.random((4, 3))
    vals_a = {("d", e): list(a[e]) for e in range(4)}
    vals_b = {("d", e): list(2 * a[e] + 1) for e in range(4)}       # perfectly correlated
    vals_c = {("d", e): list(-a[e]) for e in range(4)}              # perfectly anti-correlated
    sc = pd.concat([scores_frame(vals_a, "a"), scores_frame(vals_b, "b"), scores_frame(vals_c, "c")])
    corr = metric_correlation(sc)
    allrow = corr[(corr["model"] == "all")].set_index(["metric_a", "metric_b"])["r"]
    assert allrow[("a", "b")] == pytest.approx(1.0)
    assert allrow[("a", "c")] == pytest.approx(-1.0)
    assert corr["n"].max() == 9  # epoch 0 excluded: 3 epochs x 3 layers


# -- layouts, intervals, best entries, renderers -------------------------------------------------

from featdyn.engine.bootstrap import Replicates  # noqa: E402
from featdyn.report.tables import (  # noqa: E402
    table1_best,
    table2_best,
    table2_caption,
    table2_layers,
    table2_layers_layout,
    to_html,
    to_latex,
)


def grid_scores(means: dict[tuple[str, str], float], method: str = "centred") -> tuple[pd.DataFrame, dict]:
    """Two layers x epochs 0..2 per (model, dataset): layer values mean -+ 0.1, epoch e adds 0.01 e;
    replicates shift every value by b / 100 for b = 0..99 (so the Table 2 replicate is mean + b/100)."""
    rows, reps = [], {}
    for (model, dataset), mu in means.items():
        grid = np.array([[0.0] + [mu - 0.1 + 0.01 * e for e in (1, 2)], [0.0] + [mu + 0.1 + 0.01 * e for e in (1, 2)]])
        for li, e in np.ndindex(*grid.shape):
            rows.append(dict(model=model, dataset=dataset, metric="p", kind="procrustes", granularity="layer",
                             layer=f"l{li}", layer_index=li, epoch=e, value=grid[li, e]))
        reps[("p", model, dataset)] = Replicates(grid[None] + np.arange(100)[:, None, None] / 100, ["l0", "l1"],
                                                 [0, 1, 2], 0.9, method)
    return pd.DataFrame(rows), reps


def test_table2_layout_intervals_and_best_entry_per_dataset():
    means = {("vgg", "awa2"): 0.345, ("res", "awa2"): 0.410, ("vgg", "fruits"): 0.921, ("res", "fruits"): 0.749}
    scores, reps = grid_scores(means, "percentile")
    t2 = table2(scores, reps)
    assert list(t2.columns[:8]) == ["model", "dataset", "metric", "mean", "std", "ci_low", "ci_high", "bias"]
    row = t2[(t2["model"] == "res") & (t2["dataset"] == "fruits")].iloc[0]
    assert row["mean"] == pytest.approx(0.749 + 0.015) and row["std"] == pytest.approx(np.std([0.01, 0.02], ddof=1))
    # replicates are mean + b/100, b = 0..99: the 90% percentile interval is [mean + 0.0495, mean + 0.9405]
    assert row["ci_low"] == pytest.approx(row["mean"] + 0.0495)
    assert row["ci_high"] == pytest.approx(row["mean"] + 0.9405)
    assert row["epoch_list"] == "1, 2" and row["granularity"] == "layer" and row["bias"] == pytest.approx(0.495)
    # centred (the default): the same percentiles shifted by the bias, around the estimate
    centred = table2(*grid_scores(means))
    crow = centred[(centred["model"] == "res") & (centred["dataset"] == "fruits")].iloc[0]
    assert crow["ci_low"] == pytest.approx(row["mean"] - 0.4455)
    assert crow["ci_high"] == pytest.approx(row["mean"] + 0.4455)
    layout = table2_layout(t2, "p", ["vgg", "res"], ["awa2", "fruits"])
    assert layout.loc["res", "fruits"] == "0.764 ± 0.007 [0.814, 1.704]"
    best = table2_best(t2, "p", ["vgg", "res"], ["awa2", "fruits"])
    assert best.to_dict() == {"awa2": {"vgg": True, "res": False}, "fruits": {"vgg": False, "res": True}}
    md = to_markdown(layout, "Table 2", best, "caption")
    assert "| res | 0.425 ± 0.007 [0.474, 1.365] | **0.764 ± 0.007 [0.814, 1.704]** |" in md
    assert md.rstrip().endswith("caption")
    caption = table2_caption(t2, "p", "90% percentile bootstrap interval")
    assert "sample std (ddof = 1)" in caption and "epochs 1, 2" in caption and "layer reading" in caption
    tex = to_latex(layout, caption, "tab:t2", best)
    for part in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:t2}",
                 r"\textbf{0.764 $\pm$ 0.007 [0.814, 1.704]}", r"res & 0.425 $\pm$ 0.007"):
        assert part in tex, part
    html = to_html(layout, "Table 2", best, caption)
    assert "<td><b>0.764 ± 0.007 [0.814, 1.704]</b></td>" in html and "<td>0.425" in html


def test_table2_without_replicates_has_nan_intervals_and_one_model_marks_nothing():
    scores, _ = grid_scores({("m", "d"): 0.5})
    t2 = table2(scores)
    assert t2[["ci_low", "ci_high"]].isna().all().all()
    assert table2_layout(t2, "p").loc["m", "d"] == "0.515 ± 0.007"
    assert not table2_best(t2, "p").to_numpy().any()


def test_per_layer_breakdown():
    scores, reps = grid_scores({("m", "d1"): 0.5, ("m", "d2"): 0.2})
    layers = table2_layers(scores, reps)
    row = layers[(layers["dataset"] == "d1") & (layers["layer"] == "l1")].iloc[0]
    assert row["mean"] == pytest.approx(0.615) and row["std"] == pytest.approx(np.std([0.01, 0.02], ddof=1))
    assert row["ci_low"] == pytest.approx(0.615 - 0.4455) and row["bias"] == pytest.approx(0.495)
    assert row["epochs"] == 2
    layout = table2_layers_layout(layers, "m", "p", ["d2", "d1"])
    assert list(layout.index) == ["l0", "l1"] and list(layout.columns) == ["d2", "d1"]
    assert layout.loc["l0", "d1"].startswith("0.415 ± 0.007 [")


def test_table1_best_is_the_highest_test_accuracy_and_latex_escapes_names():
    rows = pd.DataFrame([{"model": m, "dataset": "fruits_360", "epoch": 3, "train_loss": 0.1, "test_loss": 0.1,
                          "train_acc": 99.0, "test_acc": acc} for m, acc in (("vgg_19", 90.0), ("res", 95.5))])
    best = table1_best(rows)
    assert best.loc["res", "fruits_360"] and not best.loc["vgg_19", "fruits_360"]
    tex = to_latex(table1(rows), "acc 100%", "tab:t1", best)
    assert r"vgg\_19 & 99.00 / 90.00" in tex and r"\textbf{99.00 / 95.50}" in tex and r"acc 100\%" in tex
    assert r"fruits\_360" in tex

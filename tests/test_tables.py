"""Tables 1 and 2 and the metric agreement, from hand-made inputs with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from featdyn import FeatdynError
from featdyn.tables import metric_correlation, read_epoch_rows, table1, table2, table2_layout, to_markdown


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

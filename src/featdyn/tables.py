"""The paper's tables from the per-epoch metrics rows and the tidy score tables.

- Table 1: train / test accuracy per (model, dataset, epoch); the paper's layout shows the last one.
- Table 2 ("reusability"): per (model, dataset, metric), the distance averaged over layers at each
  epoch, then its mean and standard deviation (sample, ddof=1) over epochs 1..T. The paper gives no
  code for it; this is the reading of its Sec. 3.2 that we implement. Epoch 0 is the source model
  itself (distance 0) and is excluded.
- Metric agreement: the Pearson correlation of two metrics, in two readings (featdyn.correlation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

from . import FeatdynError
from .atomic import atomic_path
from .correlation import metric_correlation  # noqa: F401  (re-exported: the tables' third part)

SCORE_COLUMNS = ["model", "dataset", "metric", "kind", "granularity", "layer", "layer_index", "epoch", "value"]


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_epoch_rows(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Per-epoch metrics rows (JSON files written by the fine-tuning jobs) as one table."""
    rows = []
    for p in paths:
        try:
            rows.append(json.loads(open(p).read()))
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatdynError(f"cannot read epoch metrics {p}: {exc}") from exc
    cols = ["model", "dataset", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    return pd.DataFrame(rows)[cols].sort_values(["model", "dataset", "epoch"]).reset_index(drop=True)


def table1(rows: pd.DataFrame, models: Sequence[str] | None = None,
           datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 in the paper's layout: models x datasets, 'train / test' accuracy of the last epoch.

    ``models`` and ``datasets`` give the row and column order (the config's order; the paper lists
    VGG19, DenseNet121, ResNet50 x 15-Scene, AwA2, Fruits); by default they are sorted.
    """
    last = rows.loc[rows.groupby(["model", "dataset"])["epoch"].idxmax()]
    cell = last.assign(cell=[f"{a:.2f} / {b:.2f}" for a, b in zip(last["train_acc"], last["test_acc"])])
    table = cell.pivot(index="model", columns="dataset", values="cell").rename_axis(None, axis=1)
    return table.reindex(index=models or table.index, columns=datasets or table.columns)


def layer_average(scores: pd.DataFrame) -> pd.DataFrame:
    """Distance averaged over layers, per (model, dataset, metric, epoch)."""
    keys = ["model", "dataset", "metric", "epoch"]
    return scores.groupby(keys, as_index=False)["value"].mean()


def table2(scores: pd.DataFrame) -> pd.DataFrame:
    """Reusability: mean and std over epochs >= 1 of the layer-averaged distance."""
    avg = layer_average(scores)
    avg = avg[avg["epoch"] >= 1]
    if avg.empty:
        raise FeatdynError("table 2 needs scores of at least one epoch >= 1")
    out = avg.groupby(["model", "dataset", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "epochs"})


def table2_layout(t2: pd.DataFrame, metric: str, models: Sequence[str] | None = None,
                  datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 2 in the paper's layout for one metric: models x datasets, 'mean +- std', rows and
    columns in the given (config) order as in :func:`table1`."""
    sub = t2[t2["metric"] == metric]
    cell = sub.assign(cell=[f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}"
                            for m, s in zip(sub["mean"], sub["std"])])
    table = cell.pivot(index="model", columns="dataset", values="cell").rename_axis(None, axis=1)
    return table.reindex(index=models or table.index, columns=datasets or table.columns)


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """A plain Markdown table (no extra dependency)."""
    df = df.reset_index()
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([f"### {title}", "", header, sep, *body, ""])

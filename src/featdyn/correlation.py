"""Agreement between two metrics: Pearson correlation, in the two readings of the paper.

The paper reports a Pearson correlation of 0.83 (std 0.43) between Procrustes and CKA without
saying over what. Two readings (the ``reading`` column of the output):

- ``layers_epochs``: one Pearson r over all (layer, epoch >= 1) layer values of the two metrics,
  per (model, dataset) and over all of them ('all'). ``r`` is that correlation, ``n`` the number
  of (layer, epoch) points, ``r_std`` is empty.
- ``filters_per_class``: what the authors' code did (similarity_corrilation.py): for every
  (model, dataset, layer, epoch >= 1, class), the Pearson r across filters between the two
  metrics' class-averaged per-filter vectors; then the mean (``r``) and the population standard
  deviation (``r_std``, numpy's default, as the authors printed) of those correlations, per
  (model, dataset) and over all. ``n`` counts the correlations; ``undefined`` counts the groups
  skipped because fewer than 3 filters were valid in both metrics or a vector was constant.

Epoch 0 compares the source with itself (every distance is 0) and is left out of both.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

COLUMNS = ["reading", "model", "dataset", "metric_a", "metric_b", "r", "r_std", "n", "undefined"]
MIN_POINTS = 3


def across_layers_epochs(scores: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Reading 'layers_epochs': Pearson r of two metrics' layer values over (layer, epoch >= 1)."""
    sc = scores[scores["epoch"] >= 1]
    wide = sc.pivot_table(index=["model", "dataset", "layer", "epoch"], columns="metric", values="value")
    metrics = list(metrics or wide.columns)
    rows = []
    groups = [("all", "all", wide)] + [(m, d, g) for (m, d), g in wide.groupby(level=["model", "dataset"])]
    for model, dataset, g in groups:
        for a, b in itertools.combinations(metrics, 2):
            pair = g[[a, b]].dropna()
            r = pair[a].corr(pair[b]) if len(pair) >= MIN_POINTS else np.nan
            rows.append({"reading": "layers_epochs", "model": model, "dataset": dataset, "metric_a": a,
                         "metric_b": b, "r": r, "r_std": np.nan, "n": len(pair), "undefined": 0})
    return pd.DataFrame(rows, columns=COLUMNS)


def group_pearson(frame: pd.DataFrame, keys: list[str], a: str, b: str) -> pd.DataFrame:
    """Pearson r of columns ``a`` and ``b`` within each group of ``keys`` (rows with a NaN in
    either are dropped first): columns keys + ['r', 'points']; r is NaN for groups with fewer than
    3 points or a constant column. Vectorised: centred sums per group, no Python loop."""
    f = frame.dropna(subset=[a, b])
    g = f.groupby(keys, sort=False)
    da, db = f[a] - g[a].transform("mean"), f[b] - g[b].transform("mean")
    parts = pd.DataFrame({"ab": da * db, "aa": da * da, "bb": db * db, "a2": f[a] ** 2, "b2": f[b] ** 2})
    sums = parts.join(f[keys]).groupby(keys, sort=False).sum()
    points = g.size()
    # A column constant up to rounding (relative spread below 1e-10) has no direction.
    ok = (points >= MIN_POINTS) & (sums["aa"] > 1e-20 * sums["a2"]) & (sums["bb"] > 1e-20 * sums["b2"])
    r = (sums["ab"] / np.sqrt(sums["aa"] * sums["bb"]).where(ok)).clip(-1.0, 1.0)
    return pd.DataFrame({"r": r, "points": points}).reset_index()


def across_filters(filters: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Reading 'filters_per_class': Pearson r across filters per (model, dataset, layer, epoch >= 1,
    class), summarised by mean and std. ``filters`` is the concatenation of per-filter tables
    (:data:`featdyn.similarity.FILTER_COLUMNS`) of two or more filter-granularity metrics."""
    keys = ["model", "dataset", "layer", "epoch", "class"]
    f = filters[filters["epoch"] >= 1]
    wide = f.pivot_table(index=keys + ["filter"], columns="metric", values="value", dropna=False).reset_index()
    metrics = list(metrics or [c for c in wide.columns if c not in keys + ["filter"]])
    rows = []
    for a, b in itertools.combinations(metrics, 2):
        per = group_pearson(wide, keys, a, b)
        groups = [("all", "all", per)] + [(m, d, g) for (m, d), g in per.groupby(["model", "dataset"])]
        for model, dataset, g in groups:
            r = g["r"].dropna()
            rows.append({"reading": "filters_per_class", "model": model, "dataset": dataset, "metric_a": a,
                         "metric_b": b, "r": r.mean() if len(r) else np.nan,
                         "r_std": r.std(ddof=0) if len(r) else np.nan, "n": len(r),
                         "undefined": int(g["r"].isna().sum())})
    return pd.DataFrame(rows, columns=COLUMNS)


def metric_correlation(scores: pd.DataFrame, filters: pd.DataFrame | None = None,
                       metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Both readings: across layers and epochs from the tidy ``scores``; across filters from the
    per-filter tables when ``filters`` holds two or more metrics."""
    out = [across_layers_epochs(scores, metrics)]
    if filters is not None and filters["metric"].nunique() >= 2:
        out.append(across_filters(filters))
    return pd.concat(out, ignore_index=True)

"""Agreement between two metrics: Pearson correlation, in the two readings of the paper.

The paper reports a Pearson correlation of 0.83 (std 0.43) between PWSM and Procrustes without
saying over what. Two readings (the ``reading`` column of the output):

- ``layers_epochs``: one Pearson r over all (layer, epoch >= 1) layer values of the two metrics,
  per (model, dataset) and over all of them ('all'). ``r`` is that correlation, ``n`` the number
  of (layer, epoch) points, ``r_std`` is empty; ``undefined`` is 1 when r is (fewer than 3 points
  or a constant vector). With bootstrap replicates of both metrics, ``r_ci_low`` / ``r_ci_high``
  is the interval of r over resamples of the probe images (the same resamples for both metrics).
- ``filters_per_class``: what the authors' code did (similarity_corrilation.py): for every
  (model, dataset, layer, epoch >= 1, class), the Pearson r across filters between the two
  metrics' class-averaged per-filter vectors; then the mean (``r``) and the population standard
  deviation (``r_std``, numpy's default, as the authors printed) of those correlations, per
  (model, dataset) and over all. ``n`` counts the correlations; ``undefined`` counts the groups
  skipped because fewer than 3 filters were valid in both metrics or a vector was constant.

Spearman's rho (the Pearson r of the ranks, ties averaged) stands beside Pearson's r in both
readings (``rho``, ``rho_std``). Epoch 0 compares the source with itself (every distance is 0) and
is left out of both.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from featdyn.engine.bootstrap import Replicates, bootstrap_interval

COLUMNS = ["reading", "model", "dataset", "metric_a", "metric_b", "r", "r_std", "rho", "rho_std", "r_ci_low",
           "r_ci_high", "n", "undefined"]
MIN_POINTS = 3


def _defined(centred_ss: float, raw_ss: float) -> bool:
    """A vector constant up to rounding (relative spread below 1e-10) has no direction."""
    return centred_ss > 1e-20 * raw_ss


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of the finite pairs of ``a`` and ``b``; NaN with fewer than 3 or a constant vector
    (the same rule as :func:`group_pearson`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < MIN_POINTS:
        return np.nan
    da, db = a - a.mean(), b - b.mean()
    aa, bb = float(da @ da), float(db @ db)
    if not (_defined(aa, float(a @ a)) and _defined(bb, float(b @ b))):
        return np.nan
    return float(np.clip(da @ db / np.sqrt(aa * bb), -1.0, 1.0))


def _replicate_points(reps: Replicates, layers: Sequence[str], epochs: Sequence[int]) -> np.ndarray:
    """(B, P) the replicates at the given (layer, epoch) points."""
    li = [reps.layers.index(layer) for layer in layers]
    ei = [reps.epochs.index(int(e)) for e in epochs]
    return reps.values[:, li, ei]


def _r_interval(points: pd.DataFrame, a: str, b: str, r: float,
                replicates: Mapping[tuple[str, str, str], Replicates] | None) -> tuple[float, float]:
    """Percentile interval of the layers_epochs r over the resamples of both metrics (NaN unless
    every (model, dataset) in ``points`` has replicates of both)."""
    if not replicates:
        return np.nan, np.nan
    ra, rb, first = [], [], None
    for (model, dataset), g in points.groupby(level=["model", "dataset"]):
        pa, pb = replicates.get((a, model, dataset)), replicates.get((b, model, dataset))
        if pa is None or pb is None or not pa.resamples or pa.resamples != pb.resamples:
            return np.nan, np.nan
        layers, epochs = g.index.get_level_values("layer"), g.index.get_level_values("epoch")
        ra.append(_replicate_points(pa, layers, epochs))
        rb.append(_replicate_points(pb, layers, epochs))
        first = pa
    if not ra:
        return np.nan, np.nan
    xa, xb = np.concatenate(ra, axis=1), np.concatenate(rb, axis=1)
    rs = np.array([pearson(xa[i], xb[i]) for i in range(len(xa))])
    lo, hi = bootstrap_interval(rs, r, first.level, first.method)
    # a centred interval of a correlation stays within [-1, 1]
    return float(max(lo, -1.0)), float(min(hi, 1.0))


def across_layers_epochs(scores: pd.DataFrame, metrics: Sequence[str] | None = None,
                         replicates: Mapping[tuple[str, str, str], Replicates] | None = None) -> pd.DataFrame:
    """Reading 'layers_epochs': Pearson r (and Spearman rho) of two metrics' layer values over
    (layer, epoch >= 1), with the bootstrap interval of r when ``replicates[(metric, model,
    dataset)]`` are given."""
    sc = scores[scores["epoch"] >= 1]
    wide = sc.pivot_table(index=["model", "dataset", "layer", "epoch"], columns="metric", values="value")
    metrics = list(metrics or wide.columns)
    rows = []
    groups = [("all", "all", wide)] + [(m, d, g) for (m, d), g in wide.groupby(level=["model", "dataset"])]
    for model, dataset, g in groups:
        for a, b in itertools.combinations(metrics, 2):
            pair = g[[a, b]].dropna()
            r = pearson(pair[a].to_numpy(), pair[b].to_numpy())
            rho = pearson(pair[a].rank().to_numpy(), pair[b].rank().to_numpy())
            lo, hi = _r_interval(pair, a, b, r, replicates) if np.isfinite(r) else (np.nan, np.nan)
            rows.append({"reading": "layers_epochs", "model": model, "dataset": dataset, "metric_a": a,
                         "metric_b": b, "r": r, "r_std": np.nan, "rho": rho, "rho_std": np.nan, "r_ci_low": lo,
                         "r_ci_high": hi, "n": len(pair), "undefined": int(not np.isfinite(r))})
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
    ok = (points >= MIN_POINTS) & _defined(sums["aa"], sums["a2"]) & _defined(sums["bb"], sums["b2"])
    r = (sums["ab"] / np.sqrt(sums["aa"] * sums["bb"]).where(ok)).clip(-1.0, 1.0)
    return pd.DataFrame({"r": r, "points": points}).reset_index()


def across_filters(filters: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Reading 'filters_per_class': Pearson r across filters per (model, dataset, layer, epoch >= 1,
    class), summarised by mean and std. ``filters`` is the concatenation of per-filter tables
    (:data:`featdyn.spec.columns.FILTER_COLUMNS`) of two or more filter-granularity metrics."""
    keys = ["model", "dataset", "layer", "epoch", "class"]
    f = filters[filters["epoch"] >= 1]
    wide = f.pivot_table(index=keys + ["filter"], columns="metric", values="value", dropna=False).reset_index()
    metrics = list(metrics or [c for c in wide.columns if c not in keys + ["filter"]])
    rows = []
    for a, b in itertools.combinations(metrics, 2):
        per = group_pearson(wide, keys, a, b)
        # Spearman: the Pearson r of the ranks within each group, after the same dropping of NaNs
        both = wide.dropna(subset=[a, b])
        ranks = both.groupby(keys, sort=False)[[a, b]].rank().join(both[keys])
        per["rho"] = group_pearson(ranks, keys, a, b)["r"].to_numpy()
        groups = [("all", "all", per)] + [(m, d, g) for (m, d), g in per.groupby(["model", "dataset"])]
        for model, dataset, g in groups:
            r, rho = g["r"].dropna(), g["rho"].dropna()
            rows.append({"reading": "filters_per_class", "model": model, "dataset": dataset, "metric_a": a,
                         "metric_b": b, "r": r.mean() if len(r) else np.nan,
                         "r_std": r.std(ddof=0) if len(r) else np.nan,
                         "rho": rho.mean() if len(rho) else np.nan,
                         "rho_std": rho.std(ddof=0) if len(rho) else np.nan, "r_ci_low": np.nan,
                         "r_ci_high": np.nan, "n": len(r), "undefined": int(g["r"].isna().sum())})
    return pd.DataFrame(rows, columns=COLUMNS)


def metric_correlation(scores: pd.DataFrame, filters: pd.DataFrame | None = None,
                       metrics: Sequence[str] | None = None,
                       replicates: Mapping[tuple[str, str, str], Replicates] | None = None) -> pd.DataFrame:
    """Both readings: across layers and epochs from the tidy ``scores`` (with intervals from
    ``replicates``); across filters from the per-filter tables when ``filters`` holds two or more
    metrics."""
    out = [across_layers_epochs(scores, metrics, replicates)]
    if filters is not None and filters["metric"].nunique() >= 2:
        out.append(across_filters(filters))
    return pd.concat(out, ignore_index=True)

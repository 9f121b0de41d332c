"""The score files' rows as the tables read them: per (layer, epoch), the mean over the training
replicates of the distance to the source, the spread over replicates, the noise floor and the null.

With one replicate the rows pass unchanged (the numbers of a run without replicates)."""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["model", "dataset", "metric", "kind", "granularity", "layer", "layer_index", "epoch"]


def source_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """The 'source' rows, one per (model, dataset, metric, layer, epoch): ``value`` the mean over
    the training replicates, ``spread`` their sample std (NaN for one replicate), ``replicates`` k,
    ``floor`` and ``null`` as in the score file and ``ratio`` = value / floor. Intervals of a mean
    over replicates are left to the tables (from the bootstrap files), so ``ci_low`` / ``ci_high``
    are NaN there."""
    if "comparison" not in scores:
        return scores.assign(spread=np.nan, replicates=1)
    src = scores[scores["comparison"] == "source"].copy()
    keys = [c for c in KEYS if c in src]
    k = src.groupby(keys, sort=False)["value"].transform("size")
    if (k == 1).all():
        return src.assign(spread=np.nan, replicates=1).reset_index(drop=True)
    agg = src.groupby(keys, sort=False, as_index=False).agg(
        value=("value", "mean"), spread=("value", "std"), replicates=("value", "size"),
        floor=("floor", "first"), null=("null", "first"))
    ok = agg["floor"] > 1e-12  # a floor of 0 to rounding (epoch 0) has no ratio
    with np.errstate(divide="ignore", invalid="ignore"):
        agg["ratio"] = np.where(ok, agg["value"] / agg["floor"].where(ok, 1.0), np.nan)
    agg["ci_low"] = agg["ci_high"] = np.nan
    return agg


def between_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows comparing two replicates at the same epoch (empty without replicates)."""
    if "comparison" not in scores:
        return scores.iloc[0:0]
    return scores[scores["comparison"] == "replicates"]


def null_rows(scores: pd.DataFrame) -> pd.DataFrame:
    if "comparison" not in scores:
        return scores.iloc[0:0]
    return scores[scores["comparison"] == "permutation"]

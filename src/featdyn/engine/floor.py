"""One score file per (metric, model, dataset) over k training replicates: each replicate's
distances to its source model (with their bootstrap over the probe images), the distances between
replicates at the same epoch (the noise floor) and the permutation null, in one tidy table
(:data:`featdyn.spec.columns.SCORE_COLUMNS` + :data:`featdyn.spec.columns.COMPARISON_COLUMNS`).

With one replicate the 'source' rows and the bootstrap file are those of
:func:`featdyn.engine.similarity.score_layers_with_replicates` unchanged (floor and ratio empty).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from featdyn import FeatdynError
from featdyn.engine.bootstrap import BootstrapSpec, Replicates
from featdyn.engine.metrics import DegenerateWarning, from_stats
from featdyn.engine.noise import load_full_pairs, load_null, ratio
from featdyn.engine.readings import select_reading
from featdyn.engine.similarity import (
    filter_scores_of_table,
    score_filters_with_replicates,
    score_layers_with_replicates,
)
from featdyn.engine.stats import load_sides
from featdyn.spec.columns import COMPARISON_COLUMNS, SCORE_COLUMNS
from featdyn.spec.replicates import replicate_pairs

log = logging.getLogger("featdyn.engine.floor")


def _value(kind: str, stats, params: Mapping, what: str) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateWarning)
        try:
            value = from_stats(kind, stats, **params)
        except FeatdynError as exc:
            raise FeatdynError(f"{what}: {exc}") from exc
    for w in caught:
        log.warning("%s: %s", what, w.message)
    return value


def _split(items: Sequence, k: int) -> list[list]:
    if len(items) % k:
        raise FeatdynError(f"{len(items)} files cannot be split into {k} replicates")
    step = len(items) // k
    return [list(items[r * step:(r + 1) * step]) for r in range(k)]


def score_run(block: Mapping, *, model: str, dataset: str, metric: str, epochs: Sequence[int], k: int,
              inputs: Mapping[str, Sequence[str]], spec: BootstrapSpec | None = None,
              device: torch.device | str = "cpu", null_count: int = 0) -> tuple[pd.DataFrame, Replicates]:
    """The score table and bootstrap replicates of one (metric, model, dataset) over ``k`` training
    replicates. ``inputs``: the score job's input lists, replicate by replicate and epoch by epoch
    (``epochs``, ``groups``; layer metrics also ``source``, ``source_groups``, ``pairs`` (every pair
    a < b, epoch by epoch) and ``null``)."""
    params = {key: v for key, v in block.items() if key not in ("kind", "granularity", "tokens")}
    filt = block["granularity"] == "filter"
    # the floor and the null read token layers as the distances to the source do (the metric's `tokens`)
    reading = block.get("tokens", "patches")
    frames, boots = [], []
    epoch_files = _split(inputs["epochs"], k)
    group_files = _split(inputs["groups"], k) if spec is not None and spec.enabled else [[]] * k
    for r in range(k):
        if filt:
            df, reps = score_filters_with_replicates(epoch_files[r], block, model=model, dataset=dataset,
                                                     metric=metric, spec=spec, group_files=group_files[r])
        else:
            df, reps = score_layers_with_replicates(inputs["source"][r], epoch_files[r], epochs, block, model=model,
                                                    dataset=dataset, metric=metric, device=device, spec=spec,
                                                    source_groups_file=inputs["source_groups"][r],
                                                    group_files=group_files[r])
        frames.append(df.assign(comparison="source", replicate=r, other=np.nan))
        boots.append(reps)
    source = pd.concat(frames, ignore_index=True)
    rows = [source]
    layer_index = source.drop_duplicates("layer").set_index("layer")["layer_index"].to_dict()
    base = {"model": model, "dataset": dataset, "metric": metric, "kind": block["kind"],
            "granularity": block["granularity"], "ci_low": np.nan, "ci_high": np.nan}

    # between replicates: every pair at every epoch (layer metrics from their pair statistics,
    # filter metrics from their per-filter tables of the pair)
    pair_rows = []
    if k >= 2:
        pairs = replicate_pairs(k)
        files = inputs["pairs"]
        if len(files) != len(pairs) * len(epochs):
            raise FeatdynError(f"{len(files)} replicate comparison files for {len(pairs)} pairs x {len(epochs)} epochs")
        for p, (a, b) in enumerate(pairs):
            for e, epoch in enumerate(epochs):
                path = files[p * len(epochs) + e]
                if filt:
                    values = {layer: scores.layer_value()
                              for (layer, _), scores in filter_scores_of_table(pd.read_csv(path)).items()}
                else:
                    values = {}
                    for layer, stats in select_reading(load_full_pairs(path, device), reading).items():
                        what = (f"metrics.{metric} ({block['kind']}) between replicates {a} and {b} ({path}), "
                                f"layer {layer!r}")
                        values[layer] = _value(block["kind"], stats, params, what)
                for layer, value in values.items():
                    pair_rows.append({**base, "layer": layer, "layer_index": layer_index[layer], "epoch": int(epoch),
                                      "value": value, "comparison": "replicates", "replicate": a, "other": b})
    # the permutation null of replicate 0's source model, per layer
    null_rows = []
    if not filt and null_count and inputs.get("null"):
        src = load_sides(inputs["source"][0], device)
        for layer, perms in select_reading(load_null(inputs["null"], src, null_count, device), reading).items():
            for p, stats in enumerate(perms):
                what = f"metrics.{metric} ({block['kind']}) permutation null {p} ({inputs['null']}), layer {layer!r}"
                null_rows.append({**base, "layer": layer, "layer_index": layer_index[layer], "epoch": 0,
                                  "value": _value(block["kind"], stats, params, what), "comparison": "permutation",
                                  "replicate": p, "other": np.nan})
    between = pd.DataFrame(pair_rows, columns=SCORE_COLUMNS + COMPARISON_COLUMNS[:3])
    null = pd.DataFrame(null_rows, columns=SCORE_COLUMNS + COMPARISON_COLUMNS[:3])
    floor = between.groupby(["layer", "epoch"])["value"].mean()
    keys = list(zip(source["layer"], source["epoch"]))
    source["floor"] = [floor.get(key, np.nan) for key in keys]
    source["ratio"] = ratio(source["value"], source["floor"])
    per_layer_null = null.groupby("layer")["value"].mean()
    source["null"] = source["layer"].map(per_layer_null).astype(float)
    rows = [source] + [f for f in (between, null) if len(f)]
    table = pd.concat(rows, ignore_index=True) if len(rows) > 1 else source
    for col in COMPARISON_COLUMNS:
        if col not in table:
            table[col] = np.nan
    return table[SCORE_COLUMNS + COMPARISON_COLUMNS], combined_replicates(boots, source)


def combined_replicates(boots: Sequence[Replicates], source: pd.DataFrame) -> Replicates:
    """The bootstrap file of k replicates: replicate 0's as it is for k = 1; else the resamples of
    the replicates' mean (every replicate is resampled with the same image weights, so the mean of
    their resamples is a resample of their mean) and each replicate's own estimates (``seeds``)."""
    if len(boots) == 1:
        return boots[0]
    first = boots[0]
    for b in boots[1:]:
        if b.layers != first.layers or b.epochs != first.epochs:
            raise FeatdynError("the replicates were scored on different layers or epochs")
    seeds = np.full((len(boots), len(first.layers), len(first.epochs)), np.nan)
    li = {layer: i for i, layer in enumerate(first.layers)}
    ei = {int(e): i for i, e in enumerate(first.epochs)}
    for row in source.itertuples():
        seeds[int(row.replicate), li[row.layer], ei[int(row.epoch)]] = row.value
    values = np.mean(np.stack([b.values for b in boots]), axis=0) if first.resamples else first.values
    return Replicates(values, first.layers, first.epochs, first.level, first.method, seeds)


def score_job(snakemake_input, params, wildcards, device, spec: BootstrapSpec) -> tuple[pd.DataFrame, Replicates]:
    """:func:`score_run` from a score job's input and params (workflow/scripts/score.py)."""
    keys = ("epochs", "groups", "source", "source_groups", "pairs")
    inputs = {key: list(getattr(snakemake_input, key, []) or []) for key in keys}
    inputs["null"] = getattr(snakemake_input, "null", None) or None
    if isinstance(inputs["null"], list):
        inputs["null"] = inputs["null"][0] if inputs["null"] else None
    return score_run(params.metric, model=wildcards.model, dataset=wildcards.dataset, metric=wildcards.metric,
                     epochs=params.epochs, k=params.k, inputs=inputs, spec=spec, device=device,
                     null_count=params.null["permutations"])

"""Compare stores: stream activation stores into statistics, and statistics into score tables."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from featdyn import FeatdynError
from featdyn.data.stores import open_pair, open_store
from featdyn.engine.bootstrap import (
    BootstrapSpec,
    FilterGroups,
    Replicates,
    bias_free_mean,
    layer_replicates,
    load_filter_groups,
    resample_weights,
    small_matrix_threads,
)
from featdyn.engine.filterwise import FilterAccumulator, FilterScores
from featdyn.engine.metrics import DegenerateWarning, from_stats
from featdyn.engine.readings import describe, reading_batches, readings, select_reading
from featdyn.engine.stats import (
    Accumulator,
    GroupAccumulator,
    PairStats,
    SideStats,
    image_groups,
    load_group_pairs,
    load_group_sides,
    load_pairs,
    load_sides,
    stream_pair,
)
from featdyn.progress import Progress
from featdyn.spec.columns import FILTER_COLUMNS, SCORE_COLUMNS

log = logging.getLogger("featdyn.engine.similarity")


@contextlib.contextmanager
def about(what: str, *paths: str | os.PathLike) -> Iterator[None]:
    """Prefix a FeatdynError raised inside with ``what`` (the store or file, layer and epoch), so that
    an error from the statistics or the metrics says which numbers it was computing; errors that
    already name one of ``paths`` (the store reader's) pass as they are."""
    try:
        yield
    except FeatdynError as exc:
        if any(str(p) in str(exc) for p in paths):
            raise
        raise FeatdynError(f"{what}: {exc}") from exc


def source_stats_from_store(path: str | os.PathLike, device: torch.device | str = "cpu",
                            expect: Mapping | None = None) -> dict[str, SideStats]:
    """Per-layer statistics of the source model's activations (read once, shared by all epochs).
    ``expect``: attributes the store must carry (:func:`featdyn.data.stores.expected_attrs`)."""
    return source_group_stats_from_store(path, device, expect, groups=0)[0]


def source_group_stats_from_store(path: str | os.PathLike, device: torch.device | str = "cpu",
                                  expect: Mapping | None = None, groups: int = 0, tokens: Sequence[str] = ()
                                  ) -> tuple[dict[str, SideStats], dict[str, list[SideStats]]]:
    """:func:`source_stats_from_store` and, from the same pass, the statistics of each of
    ``groups`` image groups (:func:`featdyn.engine.stats.image_groups`; none when 0): (sides, group sides).
    ``tokens``: the token readings besides the patches to keep for token layers (:func:`readings`)."""
    store = open_store(path, {**(expect or {}), "epoch": 0})
    out, grouped = {}, {}
    for key, layer, reading in readings(store, tokens):
        with about(f"activation store {path}, layer {describe(layer, reading)}, epoch 0", path):
            acc = Accumulator(device)
            gacc = GroupAccumulator(image_groups(store.n, groups), device) if groups else None
            for start, block in reading_batches(store, layer, reading):
                acc.update(block)
                if gacc is not None:
                    gacc.update(start, block)
            out[key] = acc.side()
            if gacc is not None:
                grouped[key] = gacc.sides()
        log.info("source %s: n=%d, C=%d", key, out[key].n, out[key].sum.shape[0])
    return out, grouped


def pair_stats_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike,
                           source: Mapping[str, SideStats], device: torch.device | str = "cpu",
                           expect: Mapping | None = None, *, source_attrs: Mapping | None = None,
                           target_attrs: Mapping | None = None) -> dict[str, PairStats]:
    """Per-layer cross statistics of (source, target), streamed chunk by chunk from both stores.
    ``expect`` applies to both stores, ``source_attrs`` / ``target_attrs`` to one (epoch, checkpoint hash)."""
    return pair_group_stats_from_stores(source_path, target_path, source, device, expect,
                                        source_attrs=source_attrs, target_attrs=target_attrs)[0]


def pair_group_stats_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike,
                                 source: Mapping[str, SideStats], device: torch.device | str = "cpu",
                                 expect: Mapping | None = None, *, source_attrs: Mapping | None = None,
                                 target_attrs: Mapping | None = None,
                                 source_groups: Mapping[str, list[SideStats]] | None = None,
                                 tokens: Sequence[str] = ()
                                 ) -> tuple[dict[str, PairStats], dict[str, list[PairStats]]]:
    """:func:`pair_stats_from_stores` and, from the same pass, each image group's statistics when
    ``source_groups`` (the source's per-group sides) is given: (pairs, group pairs)."""
    src, tgt = open_pair(source_path, target_path, expect, source=source_attrs, target=target_attrs)
    out, grouped = {}, {}
    for key, layer, reading in readings(src, tokens):
        if key not in source:
            raise FeatdynError(f"source statistics lack layer {key!r}")
        gacc = None
        if source_groups:
            if key not in source_groups:
                raise FeatdynError(f"source group statistics lack layer {key!r}")
            # the groups' X side is the source's: share its shift, skip its Gram matrix
            gacc = GroupAccumulator(image_groups(src.n, len(source_groups[key])), device,
                                    x_shift=source_groups[key][0].shift, x_gram=False)

        def blocks(gacc=gacc, layer=layer, reading=reading):
            step = src.array(layer).chunks[0]
            for (start, xb), (_, yb) in zip(reading_batches(src, layer, reading, step),
                                            reading_batches(tgt, layer, reading, step)):
                if gacc is not None:
                    gacc.update(start, xb, yb)
                yield xb, yb

        with about(f"activation stores {source_path} and {target_path}, layer {describe(layer, reading)}, "
                   f"epoch {tgt.attrs.get('epoch')}", source_path, target_path):
            out[key] = stream_pair(blocks(), device, source=source[key])
            if gacc is not None:
                grouped[key] = gacc.pairs()
        log.info("epoch %s %s: n=%d", tgt.attrs.get("epoch"), key, out[key].n)
    return out, grouped


def _params(block: Mapping) -> dict:
    return {k: v for k, v in block.items() if k not in ("kind", "granularity", "tokens")}


def _with_intervals(rows: list[tuple], reps: Replicates) -> pd.DataFrame:
    """Score rows (without the interval columns) plus ci_low / ci_high from the replicates."""
    df = pd.DataFrame(rows, columns=[c for c in SCORE_COLUMNS if c not in ("ci_low", "ci_high")])
    df["ci_low"] = df["ci_high"] = np.nan
    if reps.resamples:
        li = df["layer"].map({layer: i for i, layer in enumerate(reps.layers)}).to_numpy()
        ei = df["epoch"].map({e: i for i, e in enumerate(reps.epochs)}).to_numpy()
        point = np.full(reps.values.shape[1:], np.nan)
        point[li, ei] = df["value"].to_numpy()
        lo, hi = reps.interval(reps.values, point)
        df["ci_low"], df["ci_high"] = lo[li, ei], hi[li, ei]
        undefined = np.isnan(reps.values).sum(axis=0)[li, ei]
        if undefined.any():  # counted, never silently dropped
            log.warning("undefined (NaN) resamples, left out of the intervals: %s",
                        ", ".join(f"{r.layer} epoch {r.epoch}: {k} of {reps.resamples}"
                                  for r, k in zip(df.itertuples(), undefined) if k))
        # The resamples of a distance are biased (fewer distinct images); say where the bias is
        # large against the interval (tables carry it in their `bias` column).
        bias = (bias_free_mean(reps.values) - point)[li, ei]
        large = np.abs(bias) > np.maximum((df["ci_high"] - df["ci_low"]).to_numpy() / 2, 1e-9)
        if large.any():
            log.warning("bootstrap bias (mean of the resamples minus the estimate) beyond half the interval at %d "
                        "of %d values: %s", int(large.sum()), len(df),
                        ", ".join(f"{r.layer} epoch {r.epoch} {b:+.3g}" for r, b in zip(df[large].itertuples(),
                                                                                      bias[large])))
    return df[SCORE_COLUMNS]


def score_layers_with_replicates(source_file: str | os.PathLike, epoch_files: Sequence[str | os.PathLike],
                                 epochs: Sequence[int], block: Mapping, *, model: str, dataset: str, metric: str,
                                 device: torch.device | str = "cpu", spec: BootstrapSpec | None = None,
                                 source_groups_file: str | os.PathLike | None = None,
                                 group_files: Sequence[str | os.PathLike] = ()) -> tuple[pd.DataFrame, Replicates]:
    """Tidy layer-granularity scores of one metric for every analysed epoch, with bootstrap
    intervals over the probe images when ``spec`` is enabled (then ``source_groups_file`` and one
    group file per epoch are the per-group statistics of ``source_file`` and ``epoch_files``)."""
    params = _params(block)
    reading = block.get("tokens", "patches")
    source = load_sides(source_file, device)
    boot = spec is not None and spec.enabled
    if boot and len(group_files) != len(epoch_files):
        raise FeatdynError(f"bootstrap: {len(group_files)} group statistics files for {len(epoch_files)} epochs")
    source_groups = load_group_sides(source_groups_file, device) if boot else {}
    rows, values, layers, weights = [], [], None, None
    for e, (epoch, path) in enumerate(zip(epochs, epoch_files)):
        # a token layer read as the metric's `tokens` say (the patch grid by default)
        pairs = select_reading(load_pairs(path, source, device), reading)
        layers = layers or list(pairs)
        # epoch 0 is the source model against itself: the same (zero) distance in every resample
        resample = boot and int(epoch) != 0
        groups = select_reading(load_group_pairs(group_files[e], source_groups, device), reading) if resample else {}
        column = []
        for i, (layer, stats) in enumerate(pairs.items()):
            what = f"metrics.{metric} ({block['kind']}) of {path} (with {source_file}), layer {layer!r}, epoch {epoch}"
            with about(what), warnings.catch_warnings(record=True) as caught, \
                    small_matrix_threads(max(stats.xy.shape), device):
                warnings.simplefilter("always", DegenerateWarning)
                value = from_stats(block["kind"], stats, **params)
            for w in caught:  # an undefined value (NaN) is reported with its layer and epoch
                log.warning("%s: layer %s, epoch %s: %s", metric, layer, epoch, w.message)
            rows.append((model, dataset, metric, block["kind"], "layer", layer, i, int(epoch), value))
            if resample:
                if layer not in groups:
                    raise FeatdynError(f"{group_files[e]}: no group statistics of layer {layer!r}")
                if weights is None:
                    weights = resample_weights(len(groups[layer]), spec.resamples, spec.seed, dataset)
                with about(f"bootstrap of {what}"):
                    column.append(layer_replicates(groups[layer], weights, block["kind"], params))
            elif boot:
                column.append(np.full(spec.resamples, value))
        values.append(column)
        if boot:
            log.info("epoch %s: %d bootstrap replicates of %d layers", epoch, spec.resamples, len(column))
    layers = layers or []
    # values[e][l][b] -> (B, L, E)
    arr = np.transpose(np.array(values, dtype=float), (2, 1, 0)) if boot else np.empty((0, len(layers), len(epochs)))
    reps = Replicates(arr, layers, [int(e) for e in epochs], spec.level if spec else 0.95,
                      spec.interval if spec else "centred")
    return _with_intervals(rows, reps), reps


def filter_scores_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike, block: Mapping, *,
                              model: str, dataset: str, metric: str,
                              device: torch.device | str | None = None, expect: Mapping | None = None,
                              source_attrs: Mapping | None = None, target_attrs: Mapping | None = None,
                              groups: int = 0) -> tuple[pd.DataFrame, dict[str, FilterGroups]]:
    """Filter-granularity distances of one epoch against the source model (epoch 0), per layer,
    class and filter (:data:`featdyn.spec.columns.FILTER_COLUMNS`), streamed chunk by chunk from
    both stores; and, with ``groups`` > 0, the per-(image group, class, filter) sums and counts
    behind them (:class:`featdyn.engine.bootstrap.FilterGroups`), from the same pass.
    ``expect``, ``source_attrs``, ``target_attrs``: as in :func:`pair_stats_from_stores`."""
    if block.get("granularity") != "filter":
        raise FeatdynError(f"metrics.{metric}: filter tables need granularity 'filter', got {block.get('granularity')!r}")
    src, tgt = open_pair(source_path, target_path, expect, source=source_attrs, target=target_attrs)
    epoch = int(tgt.attrs.get("epoch", -1))
    ids = image_groups(src.n, groups) if groups else None
    g_count = int(ids.max()) + 1 if groups else 0
    frames, grouped = [], {}
    for index, layer in enumerate(src.layers):
        acc = FilterAccumulator(block["kind"], device=device)
        chunk = src.array(layer).chunks[0]
        progress = Progress(log, f"epoch {epoch} {layer}", -(-src.n // chunk))
        with about(f"activation stores {source_path} and {target_path}, layer {layer!r}, epoch {epoch}",
                   source_path, target_path):
            for step, ((start, xb), (_, yb)) in enumerate(zip(src.batches(layer), tgt.batches(layer, chunk)), 1):
                labels = src.labels[start:start + len(xb)]
                # with groups, accumulate per (class, group): label class * G + group, split afterwards
                acc.update(xb, yb, labels if ids is None else labels * g_count + ids[start:start + len(xb)])
                progress.update(step, len(xb))
            scores = acc.result()
        if ids is not None:
            grouped[layer] = FilterGroups.from_scores(scores, g_count)
            scores = grouped[layer].scores()
        skipped, undefined = int(scores.skipped.sum()), scores.undefined_filters()
        if skipped:
            log.warning("epoch %d %s: %d (image, filter) map pairs skipped as dead (zero after centring); "
                        "%d filters dead in every image", epoch, layer, skipped, undefined)
        k, c = scores.sums.shape
        frames.append(pd.DataFrame({
            "model": model, "dataset": dataset, "metric": metric, "kind": block["kind"], "layer": layer,
            "layer_index": index, "epoch": epoch, "class": np.repeat(scores.classes, c),
            "filter": np.tile(np.arange(c), k), "value": scores.class_means().reshape(-1),
            "images": scores.counts.reshape(-1), "skipped": scores.skipped.reshape(-1)}))
    return pd.concat(frames, ignore_index=True)[FILTER_COLUMNS], grouped


def filter_scores_of_table(table: pd.DataFrame) -> dict[tuple[str, int], FilterScores]:
    """Rebuild the per-layer :class:`FilterScores` of each (layer, epoch) from a filter table."""
    out = {}
    for (layer, epoch), g in table.groupby(["layer", "epoch"], sort=False):
        counts = g.pivot(index="class", columns="filter", values="images")
        skipped = g.pivot(index="class", columns="filter", values="skipped")
        means = g.pivot(index="class", columns="filter", values="value").fillna(0.0)
        out[(layer, int(epoch))] = FilterScores(counts.index.to_numpy(), (means * counts).to_numpy(float),
                                                counts.to_numpy(np.int64), skipped.to_numpy(np.int64))
    return out


def score_filters(table_files: Sequence[str | os.PathLike], block: Mapping, *, model: str, dataset: str,
                  metric: str) -> pd.DataFrame:
    """Tidy scores of a filter-granularity metric: per (layer, epoch) the mean over filters of the
    class-averaged per-filter distances (the paper's mean of S_l); no intervals."""
    return score_filters_with_replicates(table_files, block, model=model, dataset=dataset, metric=metric)[0]


def score_filters_with_replicates(table_files: Sequence[str | os.PathLike], block: Mapping, *, model: str,
                                  dataset: str, metric: str, spec: BootstrapSpec | None = None,
                                  group_files: Sequence[str | os.PathLike] = ()) -> tuple[pd.DataFrame, Replicates]:
    """:func:`score_filters` with bootstrap intervals over the probe images when ``spec`` is
    enabled (``group_files``: the per-group sums of each epoch's table, in the same order)."""
    boot = spec is not None and spec.enabled
    if boot and len(group_files) != len(table_files):
        raise FeatdynError(f"bootstrap: {len(group_files)} filter group files for {len(table_files)} epochs")
    rows, reps, weights, order = [], {}, None, {}
    for t, path in enumerate(table_files):
        table = pd.read_csv(path)
        order |= table.drop_duplicates("layer").set_index("layer")["layer_index"].to_dict()
        groups = load_filter_groups(group_files[t]) if boot else {}
        for (layer, epoch), scores in filter_scores_of_table(table).items():
            rows.append((model, dataset, metric, block["kind"], "filter", layer, int(order[layer]), epoch,
                         scores.layer_value()))
            if boot:
                if layer not in groups:
                    raise FeatdynError(f"{group_files[t]}: no filter group sums of layer {layer!r}")
                if weights is None:
                    weights = resample_weights(groups[layer].sums.shape[0], spec.resamples, spec.seed, dataset)
                reps[(layer, epoch)] = groups[layer].replicates(weights)
    layers = sorted(order, key=order.get)
    epochs = sorted({r[7] for r in rows})
    if boot:
        values = np.stack([np.stack([reps[(layer, e)] for e in epochs], axis=1) for layer in layers], axis=1)
    else:
        values = np.empty((0, len(layers), len(epochs)))
    replicates = Replicates(values, layers, epochs, spec.level if spec else 0.95, spec.interval if spec else "centred")
    df = _with_intervals(rows, replicates)
    return df.sort_values(["epoch", "layer_index"], ignore_index=True), replicates

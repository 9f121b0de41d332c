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

from . import FeatdynError
from .filterwise import FilterAccumulator, FilterScores
from .metrics import DegenerateWarning, from_stats
from .progress import Progress
from .stats import Accumulator, PairStats, SideStats, load_pairs, load_sides, stream_pair
from .stores import open_pair, open_store
from .tables import SCORE_COLUMNS

# One row per (layer, class, filter) of one epoch: the class mean of the filter's map distance
# over the class's valid images, how many images that is, and how many were skipped as dead.
FILTER_COLUMNS = ["model", "dataset", "metric", "kind", "layer", "layer_index", "epoch", "class", "filter",
                  "value", "images", "skipped"]

log = logging.getLogger("featdyn.similarity")


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
    ``expect``: attributes the store must carry (:func:`featdyn.stores.expected_attrs`)."""
    store = open_store(path, {**(expect or {}), "epoch": 0})
    out = {}
    for layer in store.layers:
        with about(f"activation store {path}, layer {layer!r}, epoch 0", path):
            acc = Accumulator(device)
            for _, block in store.batches(layer):
                acc.update(block)
            out[layer] = acc.side()
        log.info("source %s: n=%d, C=%d", layer, out[layer].n, out[layer].sum.shape[0])
    return out


def pair_stats_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike,
                           source: Mapping[str, SideStats], device: torch.device | str = "cpu",
                           expect: Mapping | None = None, *, source_attrs: Mapping | None = None,
                           target_attrs: Mapping | None = None) -> dict[str, PairStats]:
    """Per-layer cross statistics of (source, target), streamed chunk by chunk from both stores.
    ``expect`` applies to both stores, ``source_attrs`` / ``target_attrs`` to one (epoch, checkpoint hash)."""
    src, tgt = open_pair(source_path, target_path, expect, source=source_attrs, target=target_attrs)
    out = {}
    for layer in src.layers:
        if layer not in source:
            raise FeatdynError(f"source statistics lack layer {layer!r}")
        with about(f"activation stores {source_path} and {target_path}, layer {layer!r}, "
                   f"epoch {tgt.attrs.get('epoch')}", source_path, target_path):
            blocks = ((xb, yb) for (_, xb), (_, yb) in
                      zip(src.batches(layer), tgt.batches(layer, src.array(layer).chunks[0])))
            out[layer] = stream_pair(blocks, device, source=source[layer])
        log.info("epoch %s %s: n=%d", tgt.attrs.get("epoch"), layer, out[layer].n)
    return out


def _params(block: Mapping) -> dict:
    return {k: v for k, v in block.items() if k not in ("kind", "granularity")}


def score_layers(source_file: str | os.PathLike, epoch_files: Sequence[str | os.PathLike], epochs: Sequence[int],
                 block: Mapping, *, model: str, dataset: str, metric: str,
                 device: torch.device | str = "cpu") -> pd.DataFrame:
    """Tidy layer-granularity scores of one metric for every analysed epoch."""
    params = _params(block)
    source = load_sides(source_file, device)
    rows = []
    for epoch, path in zip(epochs, epoch_files):
        for i, (layer, stats) in enumerate(load_pairs(path, source, device).items()):
            with about(f"metrics.{metric} ({block['kind']}) of {path} (with {source_file}), layer {layer!r}, "
                       f"epoch {epoch}"), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DegenerateWarning)
                value = from_stats(block["kind"], stats, **params)
            for w in caught:  # an undefined value (NaN) is reported with its layer and epoch
                log.warning("%s: layer %s, epoch %s: %s", metric, layer, epoch, w.message)
            rows.append((model, dataset, metric, block["kind"], "layer", layer, i, int(epoch), value))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def filter_table_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike, block: Mapping, *,
                             model: str, dataset: str, metric: str,
                             device: torch.device | str | None = None,
                             expect: Mapping | None = None, source_attrs: Mapping | None = None,
                             target_attrs: Mapping | None = None) -> pd.DataFrame:
    """Filter-granularity distances of one epoch against the source model (epoch 0), per layer,
    class and filter (:data:`FILTER_COLUMNS`), streamed chunk by chunk from both stores.
    ``expect``, ``source_attrs``, ``target_attrs``: as in :func:`pair_stats_from_stores`."""
    if block.get("granularity") != "filter":
        raise FeatdynError(f"metrics.{metric}: filter tables need granularity 'filter', got {block.get('granularity')!r}")
    src, tgt = open_pair(source_path, target_path, expect, source=source_attrs, target=target_attrs)
    epoch = int(tgt.attrs.get("epoch", -1))
    frames = []
    for index, layer in enumerate(src.layers):
        acc = FilterAccumulator(block["kind"], device=device)
        chunk = src.array(layer).chunks[0]
        progress = Progress(log, f"epoch {epoch} {layer}", -(-src.n // chunk))
        with about(f"activation stores {source_path} and {target_path}, layer {layer!r}, epoch {epoch}",
                   source_path, target_path):
            for step, ((start, xb), (_, yb)) in enumerate(zip(src.batches(layer), tgt.batches(layer, chunk)), 1):
                acc.update(xb, yb, src.labels[start:start + len(xb)])
                progress.update(step, len(xb))
            scores = acc.result()
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
    return pd.concat(frames, ignore_index=True)[FILTER_COLUMNS]


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
    class-averaged per-filter distances (the paper's mean of S_l)."""
    rows = []
    for path in table_files:
        table = pd.read_csv(path)
        order = table.drop_duplicates("layer").set_index("layer")["layer_index"]
        for (layer, epoch), scores in filter_scores_of_table(table).items():
            rows.append((model, dataset, metric, block["kind"], "filter", layer, int(order[layer]), epoch,
                         scores.layer_value()))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS).sort_values(["epoch", "layer_index"], ignore_index=True)

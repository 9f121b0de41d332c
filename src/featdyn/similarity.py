"""Compare stores: stream activation stores into statistics, and statistics into score tables."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from . import FeatdynError
from .metrics import from_stats
from .stats import Accumulator, PairStats, SideStats, load_pairs, load_sides, stream_pair
from .stores import open_pair, open_store
from .tables import SCORE_COLUMNS

log = logging.getLogger("featdyn.similarity")


def source_stats_from_store(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, SideStats]:
    """Per-layer statistics of the source model's activations (read once, shared by all epochs)."""
    store = open_store(path, {"epoch": 0})
    out = {}
    for layer in store.layers:
        acc = Accumulator(device)
        for _, block in store.batches(layer):
            acc.update(block)
        out[layer] = acc.side()
        log.info("source %s: n=%d, C=%d", layer, out[layer].n, out[layer].sum.shape[0])
    return out


def pair_stats_from_stores(source_path: str | os.PathLike, target_path: str | os.PathLike,
                           source: Mapping[str, SideStats], device: torch.device | str = "cpu") -> dict[str, PairStats]:
    """Per-layer cross statistics of (source, target), streamed chunk by chunk from both stores."""
    src, tgt = open_pair(source_path, target_path)
    out = {}
    for layer in src.layers:
        if layer not in source:
            raise FeatdynError(f"source statistics lack layer {layer!r}")
        blocks = ((xb, yb) for (_, xb), (_, yb) in zip(src.batches(layer), tgt.batches(layer, src.array(layer).chunks[0])))
        out[layer] = stream_pair(blocks, device, source=source[layer])
        log.info("epoch %s %s: n=%d", tgt.attrs.get("epoch"), layer, out[layer].n)
    return out


def score_layers(source_file: str | os.PathLike, epoch_files: Sequence[str | os.PathLike], epochs: Sequence[int],
                 block: Mapping, *, model: str, dataset: str, metric: str,
                 device: torch.device | str = "cpu") -> pd.DataFrame:
    """Tidy layer-granularity scores of one metric for every analysed epoch."""
    params = {k: v for k, v in block.items() if k not in ("kind", "granularity")}
    source = load_sides(source_file, device)
    rows = []
    for epoch, path in zip(epochs, epoch_files):
        for i, (layer, stats) in enumerate(load_pairs(path, source, device).items()):
            value = from_stats(block["kind"], stats, **params)
            rows.append((model, dataset, metric, block["kind"], "layer", layer, i, int(epoch), value))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)

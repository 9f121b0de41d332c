"""The qualitative stage's data: chosen units, class-average patches and aligned heatmaps, read
from the prepared image cache and the existing activation stores (no second forward pass).

Stores are opened through featdyn.data.stores (every epoch checked against the source store and the
prepared dataset); images come from the uint8 cache the model saw, so the receptive-field boxes
(computed at the stores' image size from the model's traced graph) index the right pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featdyn import FeatdynError
from featdyn.data.datasets import ImageCache
from featdyn.data.stores import ActivationStore, open_pair
from featdyn.engine.filterwise import FilterAccumulator
from featdyn.engine.similarity import filter_scores_of_table
from featdyn.nets.receptive_field import ReceptiveField
from featdyn.nets.unit_fields import HOW_MEASURED, HOW_TOKEN, unit_fields
from featdyn.nets.unit_fields import how as field_how
from featdyn.report.heatmaps import aligned_map, row_limits
from featdyn.report.patches import ClassPatch, class_patch
from featdyn.report.units import choose_units

log = logging.getLogger("featdyn.report.visualize")


def open_stores(paths: Mapping[int, str | os.PathLike], expect: Mapping | None = None) -> dict[int, ActivationStore]:
    """{epoch: store} for the source store (epoch 0, required) and each other epoch, every one
    checked against ``expect`` and against the source (same probe set, layers, shapes)."""
    if 0 not in paths:
        raise FeatdynError("the visualizations need the source model's store (epoch 0)")
    out = {}
    for epoch in sorted(paths):
        source, store = open_pair(paths[0], paths[epoch], {**(expect or {})})
        if int(store.attrs.get("epoch", -1)) != epoch:
            raise FeatdynError(f"activation store {paths[epoch]} holds epoch {store.attrs.get('epoch')}, "
                               f"expected {epoch}")
        out[epoch] = store
    return out


def filter_maps(store: ActivationStore, layer: str, filt: int, rows: Sequence[int] | None = None) -> np.ndarray:
    """(n, H, W) maps of one filter for the probe rows ``rows`` (store order; default all), in the
    store's dtype: only the chunks that hold them are read."""
    arr = store.array(layer)
    if not 0 <= filt < arr.shape[1]:
        raise FeatdynError(f"layer {layer!r} has {arr.shape[1]} filters; filter {filt} does not exist ({store.path})")
    maps = np.asarray(arr[:, filt] if rows is None else arr.oindex[np.asarray(rows, dtype=np.int64), filt])
    if not np.isfinite(maps).all():
        raise FeatdynError(f"activation store {store.path}: layer {layer!r} filter {filt} holds NaN or infinite values")
    return maps


def change_from_tables(first: str | os.PathLike, last: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per layer, each filter's distance at the last epoch minus at epoch 0, from two per-filter
    tables of a filter-granularity metric (the paper's S_l: class means averaged over classes)."""
    def per_filter(path) -> dict[str, np.ndarray]:
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise FeatdynError(f"cannot read per-filter table {path}: {exc}") from exc
        return {layer: scores.per_filter() for (layer, _), scores in filter_scores_of_table(table).items()}

    a, b = per_filter(first), per_filter(last)
    return {layer: b[layer] - a[layer] for layer in b if layer in a}


def change_from_stores(source: ActivationStore, last: ActivationStore, layer: str) -> np.ndarray:
    """Per-filter Procrustes distance (featdyn.engine.filterwise, the authors' definition) of the last
    epoch against the source model, for one layer: the change since epoch 0, where it is 0."""
    acc = FilterAccumulator("procrustes", device="cpu")
    chunk = source.array(layer).chunks[0]
    for (start, xb), (_, yb) in zip(source.batches(layer), last.batches(layer, chunk)):
        acc.update(xb, yb, source.labels[start:start + len(xb)])
    return acc.result().per_filter()


def probe_images(cache: ImageCache, store: ActivationStore) -> np.ndarray:
    """(n, S, S, 3) uint8: the cached images of the store's probe rows, in store order."""
    if int(store.index.max()) >= len(cache.images):
        raise FeatdynError(f"activation store {store.path} names image rows beyond the image cache "
                           f"({len(cache.images)} images)")
    images = np.asarray(cache.images[np.asarray(store.index)])
    size = int(store.attrs.get("image_size", images.shape[1]))
    if images.shape[1:3] != (size, size):
        raise FeatdynError(f"the image cache holds {images.shape[1]} px images, the store {store.path} was made "
                           f"at {size} px")
    return images


def units_for_run(block: Mapping, *, model: str, dataset: str, cache: ImageCache, source: ActivationStore,
                  last_epoch: int, last: ActivationStore | None = None, tables: Sequence[str] | None = None,
                  rank_metric: str | None = None) -> pd.DataFrame:
    """The chosen units of one (model, dataset) (featdyn.report.units.choose_units). Filters are ranked
    by the per-filter ``tables`` (epoch 0, ``last_epoch``) of ``rank_metric`` when given, else
    from the ``last`` epoch's store against the ``source`` store."""
    layers = list(source.layers)
    if tables is not None:
        changes = change_from_tables(*tables)
        rank_source = f"{rank_metric} per-filter distance, epoch {last_epoch} minus epoch 0"

        def change(layer: str) -> np.ndarray:
            if layer not in changes:
                raise FeatdynError(f"the per-filter table {tables[1]} has no layer {layer!r}")
            return changes[layer]
    else:
        rank_source = f"per-filter Procrustes from the stores, epoch {last_epoch} (0 at epoch 0)"

        def change(layer: str) -> np.ndarray:
            if last is None:
                raise FeatdynError("ranking filters from the stores needs the last epoch's store")
            return change_from_stores(source, last, layer)

    names = list(cache.classes)
    manifest = cache.manifest.set_index("index")
    paths = manifest.loc[np.asarray(source.index), "path"].astype(str).tolist()
    return choose_units(block, model=model, dataset=dataset, layers=layers,
                        channels={layer: int(source.array(layer).shape[1]) for layer in layers},
                        names=names, labels=np.asarray(source.labels), index=np.asarray(source.index),
                        paths=paths, change=change, source_maps=lambda layer, f: filter_maps(source, layer, f),
                        rank_source=rank_source)


def fields_for(arch: str, width: float, layers: Sequence[str], image_size: int,
               layouts: Mapping[str, Mapping] | None = None) -> dict[str, ReceptiveField]:
    """The input region of each unit of ``layers`` of ``arch`` at ``width`` (featdyn.nets.unit_fields:
    exact where the graph is understood, else measured; a token's patch for token layers);
    ``layouts``: the layers' layouts as the store records them."""
    return unit_fields(arch, width, layers, image_size, layouts or {})


def field_note(fields: Mapping[str, ReceptiveField]) -> str:
    """The end of the patch figure's caption: what the input region means where it is not an exact
    receptive field."""
    parts = []
    tokens = [layer for layer, rf in fields.items() if field_how(rf) == HOW_TOKEN]
    measured = [layer for layer, rf in fields.items() if field_how(rf) == HOW_MEASURED]
    if tokens:
        parts.append(f"Token layers ({', '.join(tokens)}): the input patch of the strongest token, not a receptive "
                     f"field (attention mixes the whole image).")
    if measured:
        parts.append(f"Layers {', '.join(measured)}: input region measured (input-gradient support of a linearised "
                     f"copy of the model); with shifted windows (Swin) it is every pixel that reaches the unit "
                     f"through the windows it attends over.")
    return " ".join(parts)


@dataclass
class PatchRow:
    """One row of the class-average figure: (class, layer, filter) and its patch per epoch."""

    cls: str
    layer: str
    filter: int
    patches: list[ClassPatch]


def patch_rows(units: pd.DataFrame, stores: Mapping[int, ActivationStore], cache: ImageCache,
               fields: Mapping[str, ReceptiveField], epochs: Sequence[int]) -> list[PatchRow]:
    """The class-average patches of every ``patches`` row of ``units``, per epoch in ``epochs``,
    in the table's row order. One (layer, filter) is read at a time, from one epoch at a time, for
    the probe images of the classes it is shown for."""
    source = stores[0]
    labels = np.asarray(source.labels)
    table = units[units["figure"] == "patches"].reset_index(drop=True)
    images = probe_images(cache, source)
    out: dict[int, PatchRow] = {}
    for (layer, filt), group in table.groupby(["layer", "filter"], sort=False):
        classes = {i: labels == int(r["label"]) for i, r in group.iterrows()}
        for i, mask in classes.items():
            if not mask.any():
                raise FeatdynError(f"class {group.loc[i, 'class']!r} has no probe image in {source.path}")
            out[i] = PatchRow(str(group.loc[i, "class"]), layer, int(filt), [])
        rows = np.flatnonzero(np.logical_or.reduce(list(classes.values())))
        for e in epochs:
            maps = filter_maps(stores[e], layer, int(filt), rows)
            for i, mask in classes.items():
                keep = mask[rows]
                out[i].patches.append(class_patch(images[rows][keep], maps[keep], fields[layer]))
    return [out[i] for i in range(len(table))]


@dataclass
class HeatmapRow:
    """One row of the heatmap figure: (image, layer, filter), the image, the aligned map per
    epoch, and the row's colour limits (over every epoch's map)."""

    image: np.ndarray
    image_id: int
    cls: str
    layer: str
    filter: int
    maps: list[np.ndarray]
    limits: tuple[float, float]


def heatmap_rows(units: pd.DataFrame, stores: Mapping[int, ActivationStore], cache: ImageCache,
                 fields: Mapping[str, ReceptiveField], epochs: Sequence[int]) -> list[HeatmapRow]:
    """The aligned heatmaps of every ``heatmaps`` row of ``units``, per epoch in ``epochs``, in the
    table's row order. Only the chosen images' maps are read."""
    source = stores[0]
    where = {int(i): p for p, i in enumerate(source.index)}
    table = units[units["figure"] == "heatmaps"].reset_index(drop=True)
    missing = sorted({int(i) for i in table["image"]} - set(where))
    if missing:
        raise FeatdynError(f"images {missing} are not probe images of {source.path}")
    positions = table["image"].map(lambda i: where[int(i)]).to_numpy()
    images = probe_images(cache, source)
    raw: dict[int, list[np.ndarray]] = {i: [] for i in range(len(table))}
    for (layer, filt), group in table.groupby(["layer", "filter"], sort=False):
        rows = sorted(set(positions[group.index]))
        for e in epochs:
            maps = filter_maps(stores[e], layer, int(filt), rows)
            for i in group.index:
                raw[i].append(maps[rows.index(positions[i])])
    out = []
    for i, r in table.iterrows():
        field = fields[r["layer"]]
        out.append(HeatmapRow(images[positions[i]], int(r["image"]), str(r["class"]), r["layer"], int(r["filter"]),
                              [aligned_map(m, field) for m in raw[i]], row_limits(raw[i])))
    return out

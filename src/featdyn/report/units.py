"""Which units the qualitative figures show: layers, filters, classes and sample images.

Everything is either given in the config's ``visualize`` block or chosen automatically and
deterministically, and every choice is written down with its reason (:data:`UNIT_COLUMNS`):

- layers: positions in the model's layer list (``-1`` = the deepest) or layer specs;
- filters: a count per layer, chosen as the filters whose per-filter distance to the source model
  changes most (half, rounded up) and least (the rest) between epoch 0 and the last epoch, from a
  filter-granularity metric's per-filter tables, or else from the stores (per-filter Procrustes of
  the source against the last epoch); or explicit indices (a list for every layer, or per layer);
- classes (class-average patches): a count, chosen per (layer, filter) as the classes whose probe
  images the filter responds to most in the source model (mean over the class of each image's
  maximum, negatives counted as 0); or class names;
- sample images (heatmaps): a count, taken as the first probe image of each class in turn; or
  manifest indices of probe images.

Ties are broken by the lower index, so the same inputs always give the same choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from featdyn import FeatdynError

UNIT_COLUMNS = ["figure", "model", "dataset", "layer", "layer_index", "filter", "class", "label", "image", "path",
                "reason"]

def resolve_layers(spec: Sequence, layers: Sequence[str], key: str) -> list[str]:
    """Layer positions (ints, negative from the end) or layer specs -> layer specs in model order."""
    chosen = set()
    for item in spec:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise FeatdynError(f"{key}: {item!r} is neither a layer position nor a layer name")
        if isinstance(item, int):
            if not -len(layers) <= item < len(layers):
                raise FeatdynError(f"{key}: position {item} is outside the model's {len(layers)} layers {list(layers)}")
            chosen.add(layers[item])
        elif item not in layers:
            raise FeatdynError(f"{key}: layer {item!r} is not captured (captured layers: {list(layers)})")
        else:
            chosen.add(item)
    return [layer for layer in layers if layer in chosen]


def explicit_filters(spec, layer: str, channels: int, key: str) -> list[int] | None:
    """The filters given for ``layer`` (a list for every layer, or a per-layer mapping), or None
    when they are to be chosen automatically (``spec`` is a count)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return None
    if isinstance(spec, Mapping):
        if layer not in spec:
            raise FeatdynError(f"{key}: no filters given for layer {layer!r} (given for {sorted(spec)})")
        spec, key = spec[layer], f"{key}.{layer}"
    filters = list(spec)
    bad = [f for f in filters if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < channels]
    if bad:
        raise FeatdynError(f"{key}: filters {bad} do not exist in layer {layer!r} "
                           f"({channels} filters: 0..{channels - 1})")
    return list(dict.fromkeys(filters))


def rank_filters(change: np.ndarray, count: int, source: str) -> list[tuple[int, str]]:
    """``count`` filters with reasons: the largest changes first (half, rounded up), then the
    smallest; filters without a defined change (NaN: dead maps) are never chosen."""
    change = np.asarray(change, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(change))
    if valid.size == 0:
        raise FeatdynError(f"no filter has a defined change ({source}): every filter is dead on the probe set; "
                           f"give the filters explicitly")
    # stable sorts on the index order: ties go to the lower filter index
    down = valid[np.argsort(-change[valid], kind="stable")]
    up = valid[np.argsort(change[valid], kind="stable")]
    most = [int(f) for f in down[:math.ceil(count / 2)]]
    least = [int(f) for f in up if int(f) not in most][:count // 2]
    rank = {int(f): i + 1 for i, f in enumerate(down)}
    out = [(f, f"most changed: rank {rank[f]} of {valid.size} by {source} ({change[f]:+.4g})") for f in most]
    out += [(f, f"least changed: rank {rank[f]} of {valid.size} by {source} ({change[f]:+.4g})") for f in least]
    return out


def max_responses(maps: np.ndarray) -> np.ndarray:
    """Each image's strongest activation of one filter, negatives as 0: (n, H, W) -> (n,). The
    weight of an image in a class-average patch, and the response that ranks classes."""
    maps = np.asarray(maps)
    if not np.isfinite(maps).all():
        raise FeatdynError("the feature maps hold NaN or infinite values")
    return np.maximum(maps.reshape(len(maps), -1).max(axis=1).astype(np.float64), 0.0)


def rank_classes(responses: np.ndarray, labels: np.ndarray, names: Sequence[str], count: int) -> list[tuple[int, str]]:
    """The ``count`` classes (labels) with the highest mean response, with reasons."""
    present = np.unique(labels)
    means = np.array([responses[labels == k].mean() for k in present])
    order = present[np.argsort(-means, kind="stable")]
    out = []
    for k in order[:count]:
        m = float(means[present == k][0])
        why = (f"strongest mean response at epoch 0 ({m:.4g})" if m > 0
               else "no response at epoch 0 in any class: first classes")
        out.append((int(k), why))
    return out


def explicit_classes(spec: Sequence[str], names: Sequence[str], key: str) -> list[int]:
    missing = [c for c in spec if c not in names]
    if missing:
        raise FeatdynError(f"{key}: classes {missing} are not in the dataset (its classes: {list(names)})")
    return [list(names).index(c) for c in dict.fromkeys(spec)]


def pick_images(spec, labels: np.ndarray, index: np.ndarray, names: Sequence[str], key: str) -> list[tuple[int, str]]:
    """Probe rows (positions in the store) for the heatmaps, with reasons. ``spec``: a count (the
    first probe image of each class in turn) or manifest indices of probe images."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        per_class = {int(k): list(np.flatnonzero(labels == k)) for k in np.unique(labels)}
        out, r = [], 0
        while len(out) < min(spec, len(labels)):
            for k, rows in per_class.items():
                if r < len(rows) and len(out) < spec:
                    out.append((int(rows[r]), f"probe image {r + 1} of class {names[k]}"))
            r += 1
        return out
    where = {int(i): p for p, i in enumerate(index)}
    missing = [i for i in spec if i not in where]
    if missing:
        raise FeatdynError(f"{key}: images {missing} are not probe images (manifest index; the probe images are "
                           f"{sorted(where)[:20]}{' ...' if len(where) > 20 else ''})")
    return [(where[i], "given in the config") for i in dict.fromkeys(spec)]


def choose_units(block: Mapping, *, model: str, dataset: str, layers: Sequence[str], channels: Mapping[str, int],
                 names: Sequence[str], labels: np.ndarray, index: np.ndarray, paths: Sequence[str],
                 change, source_maps, rank_source: str) -> pd.DataFrame:
    """The table of chosen units (:data:`UNIT_COLUMNS`) for one (model, dataset).

    ``block``: the ``visualize`` block with defaults; ``layers``: the model's captured layers in
    order; ``channels``: filters per layer; ``names``: class names by label; ``labels``,
    ``index``, ``paths``: label, manifest index and path of each probe row (store order);
    ``change(layer)``: the per-filter change vector of a layer (called only when filters are
    chosen automatically); ``source_maps(layer, filter)``: the (n, H, W) maps of the source model
    for every probe image; ``rank_source``: how the change was measured (for the reasons).
    """
    rows = []
    changes: dict[str, np.ndarray] = {}

    def filters_of(part: str, layer: str) -> list[tuple[int, str]]:
        key = f"visualize.{part}.filters"
        given = explicit_filters(block[part]["filters"], layer, channels[layer], key)
        if given is not None:
            return [(f, f"given in {key}") for f in given]
        if layer not in changes:
            changes[layer] = np.asarray(change(layer), dtype=np.float64)
            if changes[layer].shape != (channels[layer],):
                raise FeatdynError(f"per-filter change of layer {layer!r} has shape {changes[layer].shape}, "
                                   f"expected ({channels[layer]},) ({rank_source})")
        return rank_filters(changes[layer], int(block[part]["filters"]), rank_source)

    base = {"model": model, "dataset": dataset}
    patches = block["patches"]
    for layer in resolve_layers(patches["layers"], layers, "visualize.patches.layers"):
        for f, f_why in filters_of("patches", layer):
            if isinstance(patches["classes"], int) and not isinstance(patches["classes"], bool):
                classes = rank_classes(max_responses(source_maps(layer, f)), labels, names, patches["classes"])
            else:
                classes = [(k, "given in visualize.patches.classes")
                           for k in explicit_classes(patches["classes"], names, "visualize.patches.classes")]
            for k, k_why in classes:
                rows.append(base | {"figure": "patches", "layer": layer, "layer_index": list(layers).index(layer),
                                    "filter": f, "class": names[k], "label": k, "image": pd.NA, "path": "",
                                    "reason": f"filter: {f_why}; class: {k_why}"})
    heat = block["heatmaps"]
    images = pick_images(heat["images"], labels, index, names, "visualize.heatmaps.images")
    heat_layers = resolve_layers(heat["layers"], layers, "visualize.heatmaps.layers")
    for row, i_why in images:
        for layer in heat_layers:
            for f, f_why in filters_of("heatmaps", layer):
                k = int(labels[row])
                rows.append(base | {"figure": "heatmaps", "layer": layer, "layer_index": list(layers).index(layer),
                                    "filter": f, "class": names[k], "label": k, "image": int(index[row]),
                                    "path": str(paths[row]), "reason": f"filter: {f_why}; image: {i_why}"})
    df = pd.DataFrame(rows, columns=UNIT_COLUMNS)
    df["image"] = df["image"].astype("Int64")
    return df


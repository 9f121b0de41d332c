"""Sample-based visualization (the paper's Figs. 7-8): a filter's feature map laid over the image.

The map is brought to the input's size by linear interpolation between the units' receptive-field
centres (:meth:`featdyn.nets.receptive_field.ReceptiveField.centre`), clamped beyond the first and last
centre: each value lands over the input region its unit is centred on. A plain image resize would
put unit u at (u + 0.5) * S / H, which is off by half a stride or more wherever the field's
offset is not -stride / 2 (ResNet50's ``layer3.5``: 8 px at 224 px).

One colour scale serves every epoch of a row (:func:`row_limits`), so change across epochs shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featdyn import FeatdynError
from featdyn.nets.receptive_field import ReceptiveField


def interpolation_matrix(centres: np.ndarray, n_pixels: int) -> np.ndarray:
    """(n_pixels, n_units) weights of linear interpolation at pixel centres 0..n_pixels-1 between
    values placed at ``centres`` (increasing), constant beyond the ends."""
    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    out = np.zeros((n_pixels, n))
    if n == 1:
        out[:, 0] = 1.0
        return out
    pos = np.interp(np.arange(n_pixels, dtype=np.float64), centres, np.arange(n, dtype=np.float64))
    i0 = np.minimum(np.floor(pos).astype(int), n - 2)
    frac = pos - i0
    rows = np.arange(n_pixels)
    out[rows, i0] = 1.0 - frac
    out[rows, i0 + 1] += frac
    return out


def unit_centres(rf: ReceptiveField) -> tuple[np.ndarray, np.ndarray]:
    """Input coordinates of the units' centres along rows and columns. Along an axis where every
    unit sees the whole image (no position of its own), the units are spread evenly."""
    out = []
    for i in range(2):
        n, size = rf.shape[i], rf.input_size[i]
        if rf.whole[i]:
            out.append((np.arange(n) + 0.5) * size / n - 0.5)
        else:
            out.append(rf.offset[i] + rf.stride[i] * np.arange(n) + (rf.size[i] - 1) / 2)
    return out[0], out[1]


def aligned_map(fmap: np.ndarray, rf: ReceptiveField) -> np.ndarray:
    """(S_h, S_w) float64: the (H, W) map ``fmap`` of ``rf``'s layer, interpolated onto the input's
    pixels between its units' receptive-field centres."""
    fmap = np.asarray(fmap, dtype=np.float64)
    if fmap.shape != tuple(rf.shape):
        raise FeatdynError(f"layer {rf.layer!r}: a map of shape {fmap.shape} does not match the receptive field's "
                           f"{rf.shape}")
    if not np.isfinite(fmap).all():
        raise FeatdynError(f"layer {rf.layer!r}: the feature map holds NaN or infinite values")
    cy, cx = unit_centres(rf)
    return interpolation_matrix(cy, rf.input_size[0]) @ fmap @ interpolation_matrix(cx, rf.input_size[1]).T


def row_limits(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """(vmin, vmax) over every map of a row (all its epochs): the row's one colour scale."""
    lo = min(float(np.min(m)) for m in maps)
    hi = max(float(np.max(m)) for m in maps)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise FeatdynError("the feature maps hold NaN or infinite values")
    return lo, hi

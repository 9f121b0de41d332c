"""Class-based visualization (the paper's Sec. 3.3, Figs. 5-6): the average input pattern a filter
responds to in the images of one class.

For each image of the class: the unit (u, v) of the filter's map with the highest activation
``a`` (the first in row-major order on ties), the input pixels that can influence that unit
(:meth:`featdyn.nets.receptive_field.ReceptiveField.box`), placed in the unit's window so that the
unit's centre is at the same place in every crop (pixels of the window outside the image are
padding: they carry no weight). The crops are averaged with weights ``max(a, 0)``, pixel by pixel
normalised by the weights of the crops that cover the pixel; an image whose maximum is 0 (or
below) has weight 0, and a filter with weight 0 in every image of the class is *dead* there.

Every crop of a layer has the same size (its receptive field), so the crops are averaged at their
native resolution; the figure draws the average at one panel size. The window is trimmed evenly on
both sides to the part an image pixel can ever land in (a deep layer's field can be several times
the image), which keeps the unit's centre at the middle of the panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featdyn import FeatdynError
from featdyn.nets.receptive_field import ReceptiveField


@dataclass
class ClassPatch:
    """The weighted sums behind one class-average patch, in trimmed-window coordinates."""

    total: np.ndarray      # (h, w, 3) sum of weight x pixel value (0..255), float64
    coverage: np.ndarray   # (h, w) sum of the weights of the crops that cover each pixel
    weight: float          # sum of the weights
    images: int            # images of the class
    responding: int        # images with a positive weight
    units: list[tuple[int, int]]  # each image's strongest unit

    @property
    def dead(self) -> bool:
        return self.weight <= 0

    def mean(self) -> np.ndarray | None:
        """(h, w, 3) weighted mean pixel values in [0, 255], NaN where no crop lands; None if dead."""
        if self.dead:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.total / self.coverage[..., None]
        out[self.coverage <= 0] = np.nan
        return out


def display_window(rf: ReceptiveField) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis, the part ``(lo, hi)`` of the unit window (window coordinates: 0 = the window's
    first pixel) that some image pixel can fall in for some unit, trimmed evenly on both sides."""
    t, l, b, r = rf.window(0, 0)
    out = []
    for i, k in enumerate((b - t, r - l)):
        if rf.whole[i]:
            out.append((0, k))
            continue
        n, s, o, size = rf.shape[i], rf.stride[i], rf.offset[i], rf.input_size[i]
        lo = max(0, -((n - 1) * s + o))    # first window pixel an image pixel can reach
        hi = min(k, size - o)              # one past the last
        margin = min(lo, k - hi)
        out.append((margin, k - margin))
    return out[0], out[1]


def strongest_unit(fmap: np.ndarray) -> tuple[int, int, float]:
    """(u, v, value) of the highest activation of one map (the first in row-major order on ties)."""
    flat = int(np.argmax(fmap))
    u, v = divmod(flat, fmap.shape[1])
    return u, v, float(fmap[u, v])


def class_patch(images: np.ndarray, maps: np.ndarray, rf: ReceptiveField) -> ClassPatch:
    """The class-average patch of one filter: ``images`` (n, S, S, 3) uint8 and the filter's
    ``maps`` (n, H, W) of the same images, ``rf`` the layer's receptive field at S px."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or tuple(maps.shape[1:]) != tuple(rf.shape):
        raise FeatdynError(f"layer {rf.layer!r}: maps of shape {maps.shape[1:]} do not match the receptive field's "
                           f"{rf.shape} (another image size or model?)")
    if images.shape[0] != maps.shape[0] or tuple(images.shape[1:3]) != tuple(rf.input_size):
        raise FeatdynError(f"layer {rf.layer!r}: {images.shape[0]} images of {images.shape[1:3]} px for "
                           f"{maps.shape[0]} maps at {rf.input_size} px")
    if not np.isfinite(maps).all():
        raise FeatdynError(f"layer {rf.layer!r}: the feature maps hold NaN or infinite values")
    (ylo, yhi), (xlo, xhi) = display_window(rf)
    total = np.zeros((yhi - ylo, xhi - xlo, 3))
    coverage = np.zeros((yhi - ylo, xhi - xlo))
    weight, responding, units = 0.0, 0, []
    for image, fmap in zip(images, maps):
        u, v, a = strongest_unit(fmap)
        units.append((u, v))
        w = max(a, 0.0)
        if w <= 0:
            continue
        t, l, _, _ = rf.window(u, v)
        bt, bl, bb, br = rf.box(u, v)
        if bb <= bt or br <= bl:
            continue  # a unit that sees padding only
        y0, x0 = bt - t - ylo, bl - l - xlo
        total[y0:y0 + bb - bt, x0:x0 + br - bl] += w * image[bt:bb, bl:br].astype(np.float64)
        coverage[y0:y0 + bb - bt, x0:x0 + br - bl] += w
        weight += w
        responding += 1
    return ClassPatch(total, coverage, weight, len(maps), responding, units)

"""Streaming float64 sufficient statistics of a pair of representations.

Every layer-granularity metric is a function of n, the column sums, X^T X, Y^T Y and X^T Y of the
(N*H*W) x C activation matrices. They are accumulated batch by batch in float64 (on the GPU when
there is one), so the full matrices never exist in memory. Rows are shifted by a fixed reference
(the first batch's column means) before accumulating: centring later by subtracting outer(sum,
sum)/n then loses no digits to large means (a translation of the data changes nothing).

The source side (n, sum_x, X^T X) does not depend on the epoch: it is computed once per
(model, dataset) and shared by every epoch's cross statistics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from . import FeatdynError
from .atomic import atomic_path
from .linalg import as_tensor, blas_threads, cpu_workers, parallel_map, threadpool_limits

# Elements per float64 block and side: bounds the working memory of one update. On a CPU 32 MiB
# blocks (2 sides: 64 MiB, under the 82 MB of two 20,000 x 512 float32 inputs) keep the matmuls
# near full speed (smaller blocks measured up to 2x slower here); on a GPU larger blocks keep the
# float64 matmul units busy (256 MiB).
BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}

# X^T X is symmetric: a Gram product needs half the work of a general one. On a CPU numpy's
# BLAS does that (it sends B^T B to syrk: 0.46 of MKL's general product here, against 0.70 for
# torch matmuls over panels, and its X^T Y took 0.85 of MKL's); on a GPU (and without
# threadpoolctl) torch multiplies only the column panels on and right of the diagonal, (k + 1) / 2k
# of the full product for k panels, and the lower triangle is mirrored when the statistics are read.
GRAM_PANEL = {"cpu": 128, "cuda": 256}


@dataclass
class SideStats:
    """n, the shift, the column sums of (x - shift) and the Gram matrix of (x - shift)."""

    n: int
    shift: torch.Tensor
    sum: torch.Tensor
    gram: torch.Tensor

    def centered(self) -> torch.Tensor:
        """The centred scatter matrix Xc^T Xc."""
        return self.gram - torch.outer(self.sum, self.sum) / self.n


@dataclass
class PairStats:
    """Sufficient statistics of a pair (X, Y) with the same rows."""

    x: SideStats
    y: SideStats
    xy: torch.Tensor  # sum of (x - shift_x)^T (y - shift_y)
    # Decompositions shared by the metrics computed from these statistics (pwsm at several alphas
    # and cca reuse one eigendecomposition per side).
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.x.n

    def centered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Xc^T Xc, Yc^T Yc, Xc^T Yc) for column-centred X, Y (computed once)."""
        if "centered" not in self.cache:
            cxy = self.xy - torch.outer(self.x.sum, self.y.sum) / self.n
            self.cache["centered"] = (self.x.centered(), self.y.centered(), cxy)
        return self.cache["centered"]


def rows_of(maps: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature maps -> (B*H*W, C) observations x channels (2-D input passes through)."""
    t = torch.as_tensor(maps)
    if t.ndim == 2:
        return t
    if t.ndim != 4:
        raise FeatdynError(f"expected (B, C, H, W) feature maps or a 2-D matrix, got shape {tuple(t.shape)}")
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _block(t: torch.Tensor, start: int, step: int, device: torch.device,
           shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [start, start + step) of ``t`` as a fresh float64 tensor on ``device``, minus ``shift``
    (widened and shifted in one pass; a fresh tensor, so the caller's data is never touched)."""
    # move first, then widen: half the host-to-device traffic for float32 activations
    rows = t[start:start + step].to(device)
    if shift is None:
        return rows.to(torch.float64, copy=True)
    return torch.sub(rows, shift, out=torch.empty(rows.shape, dtype=torch.float64, device=device))


def _add_gram_upper(acc: torch.Tensor, b: torch.Tensor, panel: int) -> None:
    """acc += b^T b on and above the diagonal panels only (one matmul per panel of rows of acc)."""
    c = b.shape[1]
    for i in range(0, c, panel):
        acc[i:i + panel, i:].addmm_(b[:, i:i + panel].mT, b[:, i:])


def _cpu_products(xb: torch.Tensor, yb: torch.Tensor | None, x_gram: bool) -> tuple:
    """(X^T X, Y^T Y, X^T Y) of rows of a block through numpy (CPU tensors share their memory
    with the arrays; None for a product not wanted): numpy sends B^T B to BLAS syrk."""
    xn = xb.numpy()
    yn = yb.numpy() if yb is not None else None
    return (xn.T @ xn if x_gram else None, yn.T @ yn if yn is not None else None,
            xn.T @ yn if yn is not None else None)


def _mirror_upper(acc: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is that of ``acc``."""
    return acc.triu() + acc.triu(1).mT


class Accumulator:
    """Feed row blocks of X (and optionally Y); read :class:`SideStats` / :class:`PairStats`.

    ``x_shift`` pins the X-side shift (to share the source statistics across epochs); by default
    each side's shift is the column mean of its first block.

    Internals: ``xx`` and ``yy`` accumulate only the upper triangle (the diagonal panels and the
    panels right of them, see :data:`GRAM_PANEL`); :meth:`side` and :meth:`pair` mirror it. The
    whole cost is then the products the statistics need, X^T Y and half of X^T X and Y^T Y, plus
    one pass that widens and shifts each block.
    """

    def __init__(self, device: torch.device | str = "cpu", x_shift: torch.Tensor | None = None,
                 x_gram: bool = True) -> None:
        self.device = torch.device(device)
        self.x_gram = x_gram
        self.n = 0
        self.x_shift = None if x_shift is None else as_tensor(x_shift, self.device)
        self.y_shift: torch.Tensor | None = None
        self.sx = self.sy = self.xx = self.yy = self.xy = None

    def update(self, x, y=None) -> None:
        """Add the rows of ``x`` (and the matching rows of ``y``); maps are flattened by :func:`rows_of`."""
        x = rows_of(x)
        y = rows_of(y) if y is not None else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise FeatdynError(f"X has {x.shape[0]} rows but Y has {y.shape[0]}")
        budget = BLOCK_ELEMENTS.get(self.device.type, BLOCK_ELEMENTS["cpu"])
        step = max(1, budget // max(x.shape[1], 1))
        for start in range(0, x.shape[0], step):
            xb = _block(x, start, step, self.device, self.x_shift)
            yb = _block(y, start, step, self.device, self.y_shift) if y is not None else None
            self._update_block(xb, yb)

    def _update_block(self, xb: torch.Tensor, yb: torch.Tensor | None) -> None:
        """Add one float64 block; a side whose shift is already set arrives shifted (see :func:`_block`)."""
        panel = GRAM_PANEL.get(self.device.type, GRAM_PANEL["cpu"])
        if self.x_shift is None:
            self.x_shift = xb.mean(0)
            xb -= self.x_shift
        if self.sx is None:
            c = xb.shape[1]
            self.sx = torch.zeros(c, dtype=torch.float64, device=self.device)
            self.xx = torch.zeros(c, c, dtype=torch.float64, device=self.device)
        self.sx += xb.sum(0)
        if yb is not None:
            if self.y_shift is None:
                self.y_shift = yb.mean(0)
                yb -= self.y_shift
            if self.sy is None:
                c = yb.shape[1]
                self.sy = torch.zeros(c, dtype=torch.float64, device=self.device)
                self.yy = torch.zeros(c, c, dtype=torch.float64, device=self.device)
                self.xy = torch.zeros(self.xx.shape[0], c, dtype=torch.float64, device=self.device)
            self.sy += yb.sum(0)
        if self.device.type == "cpu" and threadpool_limits is not None:
            self._products_cpu(xb, yb)
        else:
            if self.x_gram:
                _add_gram_upper(self.xx, xb, panel)
            if yb is not None:
                _add_gram_upper(self.yy, yb, panel)
                self.xy.addmm_(xb.mT, yb)
        self.n += xb.shape[0]

    def _products_cpu(self, xb: torch.Tensor, yb: torch.Tensor | None) -> None:
        """The block's products, its rows split over all torch threads, each part's products on
        one core (BLAS on one thread: no OpenMP barrier to wait at on a busy machine); the parts'
        products are summed here."""
        workers = cpu_workers()
        rows = xb.shape[0]
        step = -(-rows // workers)
        parts = [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]
        with blas_threads(1 if len(parts) > 1 else workers):
            done = parallel_map(lambda p: _cpu_products(xb[p[0]:p[1]], None if yb is None else yb[p[0]:p[1]],
                                                        self.x_gram), parts, workers)
        for acc, k in ((self.xx, 0), (self.yy, 1), (self.xy, 2)):
            for products in done:
                if products[k] is not None:
                    np.add(acc.numpy(), products[k], out=acc.numpy())

    def side(self) -> SideStats:
        if self.n == 0:
            raise FeatdynError("no rows were accumulated")
        return SideStats(self.n, self.x_shift, self.sx, _mirror_upper(self.xx))

    def pair(self) -> PairStats:
        if self.xy is None:
            raise FeatdynError("no Y rows were accumulated")
        return PairStats(self.side(), SideStats(self.n, self.y_shift, self.sy, _mirror_upper(self.yy)), self.xy)


def pair_stats(x, y, device: torch.device | str = "cpu") -> PairStats:
    """One-shot statistics of two full matrices (or map stacks)."""
    acc = Accumulator(device)
    acc.update(x, y)
    return acc.pair()


def stream_pair(blocks: Iterable[tuple[np.ndarray, np.ndarray]], device: torch.device | str = "cpu",
                source: SideStats | None = None) -> PairStats:
    """Accumulate paired blocks; with ``source`` the X side reuses its shift and statistics."""
    # With the shared source side, skip its Gram matrix: only the sums are needed to check n.
    acc = Accumulator(device, x_shift=None if source is None else source.shift, x_gram=source is None)
    for xb, yb in blocks:
        acc.update(xb, yb)
    pair = acc.pair()
    if source is not None:
        if source.n != pair.n:
            raise FeatdynError(f"source statistics have n={source.n} rows, the epoch has {pair.n}")
        pair.x = SideStats(source.n, source.shift, source.sum.to(pair.xy.device), source.gram.to(pair.xy.device))
    return pair


# -- files ---------------------------------------------------------------------------------------

def save_sides(path: str | os.PathLike, sides: Mapping[str, SideStats]) -> None:
    """Save per-layer :class:`SideStats` to one ``.npz`` (atomically)."""
    arrays: dict[str, np.ndarray] = {"__layers__": np.array(list(sides))}
    for i, s in enumerate(sides.values()):
        arrays |= {f"{i}/n": np.array(s.n), f"{i}/shift": s.shift.cpu().numpy(),
                   f"{i}/sum": s.sum.cpu().numpy(), f"{i}/gram": s.gram.cpu().numpy()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_sides(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, SideStats]:
    try:
        z = np.load(path)
        layers = list(z["__layers__"])
        return {str(layer): SideStats(int(z[f"{i}/n"]), as_tensor(z[f"{i}/shift"], device),
                                      as_tensor(z[f"{i}/sum"], device), as_tensor(z[f"{i}/gram"], device))
                for i, layer in enumerate(layers)}
    except (OSError, KeyError, ValueError) as exc:
        raise FeatdynError(f"cannot read statistics file {path}: {exc}") from exc


def save_pairs(path: str | os.PathLike, pairs: Mapping[str, PairStats]) -> None:
    """Save the target side and cross term of per-layer :class:`PairStats` (the source side lives
    in its own file)."""
    arrays: dict[str, np.ndarray] = {"__layers__": np.array(list(pairs))}
    for i, p in enumerate(pairs.values()):
        arrays |= {f"{i}/n": np.array(p.n), f"{i}/shift": p.y.shift.cpu().numpy(),
                   f"{i}/sum": p.y.sum.cpu().numpy(), f"{i}/gram": p.y.gram.cpu().numpy(),
                   f"{i}/xy": p.xy.cpu().numpy()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_pairs(path: str | os.PathLike, source: Mapping[str, SideStats],
               device: torch.device | str = "cpu") -> dict[str, PairStats]:
    """Load an epoch's statistics and join them with the shared ``source`` side."""
    targets = load_sides(path, device)
    z = np.load(path)
    out = {}
    for i, (layer, ys) in enumerate(targets.items()):
        if layer not in source:
            raise FeatdynError(f"{path}: layer {layer!r} has no source statistics")
        out[layer] = PairStats(source[layer], ys, as_tensor(z[f"{i}/xy"], device))
    return out

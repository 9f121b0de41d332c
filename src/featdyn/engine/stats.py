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
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featdyn import FeatdynError
from featdyn.atomic import atomic_path
from featdyn.engine.linalg import as_tensor, blas_threads, cpu_workers, parallel_map, threadpool_limits
from featdyn.finite import all_finite, check_finite

# Elements per float64 block and side: bounds the working memory of one update. On a CPU 32 MiB
# blocks (2 sides: 64 MiB, under the 82 MB of two 20,000 x 512 float32 inputs) keep the matmuls
# near full speed (smaller blocks measured up to 2x slower here); on a GPU larger blocks keep the
# float64 matmul units busy (256 MiB).
BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}

# The products of a block, on a CPU: one BLAS syrk of the stacked block [X | Y] (numpy sends
# Z^T Z to syrk) gives X^T X, X^T Y and Y^T Y for the price of the products the statistics need,
# X^T Y and half of each symmetric Gram (measured: 2.00 general products), and computes every
# entry with the same arithmetic on some BLAS kernels only (Zen: yes; SkylakeX: the diagonal and
# off-diagonal blocks differ in the last bit). A representation against itself must give
# X^T Y == X^T X bit for bit, also against a side accumulated alone (syrk of X), so that the source
# model at epoch 0 is at distance 0 to the last digit (full whitening turns last bits into 1e-6
# rad): a block whose Y equals X bit for bit takes all three from the syrk of X alone. The rows go
# in parts of TASK_ROWS to all the torch threads, each part on one core with one BLAS thread (also
# a block of one part), and the parts are summed in order: the statistics do not depend on the
# thread count. Larger parts measured faster than 2048 rows (fewer 2C x 2C results to add). On a
# GPU (and without threadpoolctl): three torch matmuls.
TASK_ROWS = 4096


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
           shift: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [start, start + step) of ``t`` as float64 on ``device``, minus ``shift``, in ``out`` (a
    fresh tensor by default, so the caller's data is never touched)."""
    # move first, then widen: half the host-to-device traffic for float32 activations
    rows = t[start:start + step].to(device)
    if out is None:
        out = torch.empty(rows.shape, dtype=torch.float64, device=device)
    out.copy_(rows)
    # in place: torch.sub(float32 rows, float64 shift, out=...) would widen into a temporary first
    return out if shift is None else out.sub_(shift)


def _syrk(z: torch.Tensor) -> np.ndarray:
    """z^T z of a CPU tensor, through numpy's BLAS syrk (the tensor shares its memory with the array)."""
    zn = z.numpy()
    # an overflow is reported by the statistics' own check (FeatdynError naming it), not as a
    # bare numpy RuntimeWarning from a worker thread first
    with np.errstate(over="ignore", invalid="ignore"):
        return zn.T @ zn


class Accumulator:
    """Feed row blocks of X (and optionally Y); read :class:`SideStats` / :class:`PairStats`.

    ``x_shift`` pins the X-side shift (to share the source statistics across epochs); by default
    each side's shift is the column mean of its first block.

    Internals: on a CPU each block's products come from one syrk of [X | Y] (see :data:`TASK_ROWS`):
    the whole cost is the products the statistics need plus one pass that widens and shifts the
    block into place.
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
        # checked as given, so that the error's index is (image, channel, y, x) for maps
        check_finite(x, "activations (X)")
        if y is not None:
            check_finite(y, "activations (Y)")
        x = rows_of(x)
        y = rows_of(y) if y is not None else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise FeatdynError(f"X has {x.shape[0]} rows but Y has {y.shape[0]}")
        budget = BLOCK_ELEMENTS.get(self.device.type, BLOCK_ELEMENTS["cpu"])
        step = max(1, budget // max(x.shape[1], 1))
        syrk = self.device.type == "cpu" and threadpool_limits is not None
        for start in range(0, x.shape[0], step):
            stacked = None
            if syrk and y is not None:  # both sides side by side, for one syrk
                rows = min(step, x.shape[0] - start)
                stacked = torch.empty(rows, x.shape[1] + y.shape[1], dtype=torch.float64)
            xb = _block(x, start, step, self.device, self.x_shift, None if stacked is None else stacked[:, :x.shape[1]])
            yb = None if y is None else _block(y, start, step, self.device, self.y_shift,
                                               None if stacked is None else stacked[:, x.shape[1]:])
            self._update_block(xb, yb, stacked)

    def _update_block(self, xb: torch.Tensor, yb: torch.Tensor | None, stacked: torch.Tensor | None = None) -> None:
        """Add one float64 block; a side whose shift is already set arrives shifted (see :func:`_block`);
        ``stacked`` is [xb | yb] when they are views of it (CPU)."""
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
        if stacked is not None or (yb is None and self.x_gram and self.device.type == "cpu"
                                   and threadpool_limits is not None):
            self._products_cpu(xb, yb, stacked)
        else:
            if self.x_gram:
                self.xx.addmm_(xb.mT, xb)
            if yb is not None:
                self.yy.addmm_(yb.mT, yb)
                self.xy.addmm_(xb.mT, yb)
        self.n += xb.shape[0]

    def _products_cpu(self, xb: torch.Tensor, yb: torch.Tensor | None, stacked: torch.Tensor | None) -> None:
        """One syrk of [X | Y] (of X alone without Y) in row parts on all threads, summed in order.

        Where Y's block equals X's bit for bit (a layer against itself: the source model at epoch
        0), the syrk of X alone serves as X^T X, X^T Y and Y^T Y: the same call, in the same parts,
        as a side accumulated alone. The blocks of one syrk of [X | X] need not agree in the last
        bit (OpenBLAS's SkylakeX kernels compute the diagonal and the off-diagonal blocks of a
        syrk differently), and full whitening turns such bits into 1e-6 rad."""
        same = yb is not None and torch.equal(xb, yb)
        z = xb if same else stacked if stacked is not None else xb
        parts = [z[lo:lo + TASK_ROWS] for lo in range(0, z.shape[0], TASK_ROWS)]
        workers = cpu_workers()
        # One BLAS thread a part, even for a block of one part: OpenBLAS's own threads split a syrk
        # by the thread count, and its SkylakeX kernels then round some entries differently (the
        # statistics would depend on the job's threads).
        with blas_threads(1):
            done = parallel_map(_syrk, parts, workers)
        g = done[0]
        for part in done[1:]:
            g += part
        c = xb.shape[1]
        if yb is None:
            targets = [(self.xx, g)]
        elif same:
            targets = [(self.yy, g), (self.xy, g)] + ([(self.xx, g)] if self.x_gram else [])
        else:
            targets = [(self.yy, g[c:, c:]), (self.xy, g[:c, c:])] + ([(self.xx, g[:c, :c])] if self.x_gram else [])
        for acc, block in targets:
            np.add(acc.numpy(), block, out=acc.numpy())

    def side(self) -> SideStats:
        if self.n == 0:
            raise FeatdynError("no rows were accumulated")
        check_sums(self.sx, self.xx)
        return SideStats(self.n, self.x_shift, self.sx, self.xx)

    def pair(self) -> PairStats:
        if self.xy is None:
            raise FeatdynError("no Y rows were accumulated")
        check_sums(self.sy, self.yy, self.xy)
        return PairStats(self.side(), SideStats(self.n, self.y_shift, self.sy, self.yy), self.xy)


def check_sums(*sums: torch.Tensor) -> None:
    """The accumulated float64 sums are finite. The inputs were checked finite, so an inf here is an
    overflow: squares of activations around 1e150 and beyond exceed float64's 1.8e308, and every
    metric computed from them would be meaningless (each would report its maximum)."""
    for t in sums:
        if not all_finite(t):
            raise FeatdynError("the float64 statistics overflowed (sums of squared activations exceed 1.8e308: "
                               "activations of magnitude ~1e150 or more); such values cannot be compared")


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


# What a damaged statistics file raises: a truncated zip (BadZipFile, EOFError), a missing member
# (KeyError), a corrupt member (ValueError, zlib.error is an Exception too), an unreadable file (OSError).
_NPZ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile)


def _read_npz(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (or ``names``), read fully and checked finite; any damage becomes a
    FeatdynError naming the file and what was wrong."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in (names if names is not None else z.files)}
    except _NPZ_ERRORS as exc:
        raise FeatdynError(f"cannot read statistics file {path}: {type(exc).__name__}: {exc} "
                           f"(truncated or damaged: remove it and rerun the job that wrote it)") from exc
    for name, a in arrays.items():
        check_finite(a, f"statistics file {path}, array {name!r}")
    return arrays


def _sides_of(path: str | os.PathLike, z: Mapping[str, np.ndarray],
              device: torch.device | str) -> dict[str, SideStats]:
    try:
        return {str(layer): SideStats(int(z[f"{i}/n"]), as_tensor(z[f"{i}/shift"], device),
                                      as_tensor(z[f"{i}/sum"], device), as_tensor(z[f"{i}/gram"], device))
                for i, layer in enumerate(z["__layers__"])}
    except KeyError as exc:
        raise FeatdynError(f"statistics file {path} lacks the array {exc}") from exc


def load_sides(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, SideStats]:
    return _sides_of(path, _read_npz(path), device)


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
    z = _read_npz(path)
    targets = _sides_of(path, z, device)
    out = {}
    for i, (layer, ys) in enumerate(targets.items()):
        if layer not in source:
            raise FeatdynError(f"{path}: layer {layer!r} has no source statistics")
        if f"{i}/xy" not in z:
            raise FeatdynError(f"statistics file {path} lacks the array '{i}/xy'")
        out[layer] = PairStats(source[layer], ys, as_tensor(z[f"{i}/xy"], device))
    return out


# -- image groups: the statistics a bootstrap over probe images needs -----------------------------
#
# Every statistic above is a sum over observations, and an image's observations are its H x W
# positions. Kept per group of images (at a common shift), the statistics of any multiset of groups
# are a weighted sum of the groups' statistics: a bootstrap replicate that draws G groups with
# replacement is exact (the metric of the resampled activations, to rounding) and costs a weighted
# sum and one metric evaluation, with no pass over the activations. With one image per group it is
# the classical bootstrap over images.

GROUP_SEP = "|"  # group keys in the .npz files: "<group>|<layer>" (no layer spec contains '|')


def image_groups(n: int, groups: int) -> np.ndarray:
    """Group of each of ``n`` probe images: image i joins group i mod G, with G = min(groups, n).

    The stores keep the probe images class by class, so consecutive images fall into different
    groups and every group holds about as many images of each class as the others."""
    if n < 1 or groups < 1:
        raise FeatdynError(f"image groups need n >= 1 images and >= 1 group, got n={n}, groups={groups}")
    return np.arange(n) % min(groups, n)


class GroupAccumulator:
    """Statistics per image group: one :class:`Accumulator` per group.

    All groups share one X shift (``x_shift``, else the first block's column means), so the source
    side of every group matches the shift of the others; each group's Y shift is its own first
    block's (:class:`GroupStats` brings them to a common one). ``update`` takes a block of whole
    images (B, C, H, W) and the index of its first image in the store.
    """

    def __init__(self, groups: np.ndarray, device: torch.device | str = "cpu",
                 x_shift: torch.Tensor | None = None, x_gram: bool = True) -> None:
        self.groups = np.asarray(groups)
        self.count = int(self.groups.max()) + 1 if self.groups.size else 0
        self.device, self.x_gram = torch.device(device), x_gram
        self.x_shift = None if x_shift is None else as_tensor(x_shift, self.device)
        self.accs: list[Accumulator] = []

    def update(self, start: int, x, y=None) -> None:
        ids = self.groups[start:start + len(x)]
        if len(ids) != len(x):
            raise FeatdynError(f"images [{start}, {start + len(x)}) lie beyond the {len(self.groups)} grouped images")
        if self.x_shift is None:
            self.x_shift = rows_of(x).to(torch.float64).mean(0).to(self.device)
        if not self.accs:
            self.accs = [Accumulator(self.device, x_shift=self.x_shift, x_gram=self.x_gram)
                         for _ in range(self.count)]
        for g in np.unique(ids):
            rows = ids == g
            self.accs[g].update(x[rows], None if y is None else y[rows])

    def _check(self) -> None:
        empty = [g for g, acc in enumerate(self.accs) if acc.n == 0]
        if not self.accs or empty:
            raise FeatdynError(f"image groups {empty or list(range(self.count))} received no images")

    def sides(self) -> list[SideStats]:
        self._check()
        return [acc.side() for acc in self.accs]

    def pairs(self) -> list[PairStats]:
        self._check()
        return [acc.pair() for acc in self.accs]


def _reshift(n: torch.Tensor, sums: torch.Tensor, shifts: torch.Tensor, common: torch.Tensor):
    """Per-group (sum, d) for moving group statistics from ``shifts`` (G, C) to ``common`` (C,):
    x - common = (x - shift_g) + d_g with d_g = shift_g - common."""
    d = shifts - common[None, :]
    return sums + n[:, None] * d, d


@dataclass
class GroupStats:
    """One layer's per-group statistics, stacked and moved to common shifts (the pooled means).

    ``weighted(w)`` gives the :class:`PairStats` of the probe set in which group g appears w[g]
    times: the statistics of resampled images, exactly (Sum_g w_g S_g, every S a sum over rows).
    """

    n: torch.Tensor      # (G,) rows per group
    x_shift: torch.Tensor
    y_shift: torch.Tensor
    sx: torch.Tensor     # (G, Cx)
    sy: torch.Tensor     # (G, Cy)
    xx: torch.Tensor     # (G, Cx, Cx)
    yy: torch.Tensor     # (G, Cy, Cy)
    xy: torch.Tensor     # (G, Cx, Cy)

    @classmethod
    def stack(cls, pairs: Sequence[PairStats]) -> GroupStats:
        if not pairs:
            raise FeatdynError("no group statistics to stack")
        dev = pairs[0].xy.device
        n = torch.tensor([float(p.n) for p in pairs], dtype=torch.float64, device=dev)
        xs = torch.stack([p.x.shift for p in pairs])
        ys = torch.stack([p.y.shift for p in pairs])
        sx0, sy0 = torch.stack([p.x.sum for p in pairs]), torch.stack([p.y.sum for p in pairs])
        # common shifts: the pooled column means (every group's sum then counts deviations from it)
        cx = (sx0 + n[:, None] * xs).sum(0) / n.sum()
        cy = (sy0 + n[:, None] * ys).sum(0) / n.sum()
        sx, dx = _reshift(n, sx0, xs, cx)
        sy, dy = _reshift(n, sy0, ys, cy)
        def moved(s_ab, s_a, d, s_b, e, g):
            # (a + d)(b + e)^T summed over the group's rows = S_ab + s_a e^T + d s_b^T + n d e^T
            return s_ab + torch.outer(s_a, e) + torch.outer(d, s_b) + n[g] * torch.outer(d, e)

        xx = torch.stack([moved(p.x.gram, sx0[g], dx[g], sx0[g], dx[g], g) for g, p in enumerate(pairs)])
        yy = torch.stack([moved(p.y.gram, sy0[g], dy[g], sy0[g], dy[g], g) for g, p in enumerate(pairs)])
        xy = torch.stack([moved(p.xy, sx0[g], dx[g], sy0[g], dy[g], g) for g, p in enumerate(pairs)])
        return cls(n, cx, cy, sx, sy, xx, yy, xy)

    @property
    def groups(self) -> int:
        return int(self.n.shape[0])

    def weighted(self, w) -> PairStats:
        """Statistics of the multiset with group g counted ``w[g]`` times (non-negative integers)."""
        w = as_tensor(w, self.n.device)
        n = float(w @ self.n)
        if n < 1:
            raise FeatdynError("a resample must hold at least one image")

        def mix(t: torch.Tensor) -> torch.Tensor:
            return torch.tensordot(w, t, dims=1)

        x = SideStats(int(round(n)), self.x_shift, mix(self.sx), mix(self.xx))
        y = SideStats(int(round(n)), self.y_shift, mix(self.sy), mix(self.yy))
        return PairStats(x, y, mix(self.xy))

    def weighted_many(self, weights) -> Iterator[PairStats]:
        """:meth:`weighted` for every row of ``weights`` (B, G), the weighted sums computed a chunk
        of rows at a time (one batched matmul per statistic instead of B small ones; a chunk holds
        at most BLOCK_ELEMENTS elements per statistic)."""
        w = as_tensor(weights, self.n.device)
        c2 = max(self.xx[0].numel(), self.yy[0].numel(), self.xy[0].numel())
        step = max(1, BLOCK_ELEMENTS.get(self.n.device.type, BLOCK_ELEMENTS["cpu"]) // c2)
        for start in range(0, len(w), step):
            wb = w[start:start + step]
            n = wb @ self.n
            if bool((n < 1).any()):
                raise FeatdynError("a resample must hold at least one image")
            sx, sy = wb @ self.sx, wb @ self.sy
            xx, yy, xy = (torch.tensordot(wb, t, dims=1) for t in (self.xx, self.yy, self.xy))
            for b in range(len(wb)):
                rows = int(round(float(n[b])))
                yield PairStats(SideStats(rows, self.x_shift, sx[b], xx[b]),
                                SideStats(rows, self.y_shift, sy[b], yy[b]), xy[b])


def _group_key(layer: str, g: int) -> str:
    return f"{g}{GROUP_SEP}{layer}"


def _ungroup(keyed: Mapping[str, object]) -> dict[str, list]:
    out: dict[str, dict[int, object]] = {}
    for key, value in keyed.items():
        g, _, layer = key.partition(GROUP_SEP)
        out.setdefault(layer, {})[int(g)] = value
    return {layer: [by_g[g] for g in sorted(by_g)] for layer, by_g in out.items()}


def save_group_sides(path: str | os.PathLike, sides: Mapping[str, Sequence[SideStats]]) -> None:
    """Save per-layer lists of per-group :class:`SideStats` (:func:`save_sides`, keys 'g|layer')."""
    save_sides(path, {_group_key(layer, g): s for layer, groups in sides.items() for g, s in enumerate(groups)})


def load_group_sides(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, list[SideStats]]:
    return _ungroup(load_sides(path, device))


def save_group_pairs(path: str | os.PathLike, pairs: Mapping[str, Sequence[PairStats]]) -> None:
    """Save per-layer lists of per-group :class:`PairStats` (target side and cross term, as
    :func:`save_pairs`; the source side lives in the source's group file)."""
    save_pairs(path, {_group_key(layer, g): p for layer, groups in pairs.items() for g, p in enumerate(groups)})


def load_group_pairs(path: str | os.PathLike, source: Mapping[str, Sequence[SideStats]],
                     device: torch.device | str = "cpu") -> dict[str, list[PairStats]]:
    """Load an epoch's per-group statistics and join each group with the source's same group."""
    stored = _ungroup({str(k): None for k in _read_npz(path, ["__layers__"])["__layers__"]})
    for layer, groups in stored.items():
        if len(groups) != len(source.get(layer, ())):
            raise FeatdynError(f"{path}: layer {layer!r} has {len(groups)} image groups, "
                               f"the source statistics {len(source.get(layer, ()))}")
    keyed = {_group_key(layer, g): s for layer, groups in source.items() for g, s in enumerate(groups)}
    out = _ungroup(load_pairs(path, keyed, device))
    for layer, groups in out.items():
        for g, p in enumerate(groups):
            if p.y.n != p.x.n:
                raise FeatdynError(f"{path}: layer {layer!r} group {g} has n={p.y.n} rows, the source n={p.x.n}")
    return out

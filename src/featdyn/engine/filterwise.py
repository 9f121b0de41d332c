"""Filter granularity: each filter's H x W map in the source model against the fine-tuned one.

As in the authors' code (hamedbehzadi/TransferLearning_Interpretation, compute_similarities.py):
for every probe image and every filter, the source map A and the fine-tuned map B (H x W, rows =
the H image rows) are each reduced by the mean of each of their rows and Frobenius-normalised,

    A* = (A - rowmean(A)) / ||A - rowmean(A)||_F,

and compared by Orthogonal Procrustes, 1 - ||A*^T B*||_* (the authors stored the similarity
||A*^T B*||_*), or by linear CKA, 1 - CKA(A*, B*) (CKA centres the H observations itself, so the
maps end up double-centred). The values are averaged over the images of each class, then over the
classes: a vector of length C per layer (the paper's "1 x d" vector S_l), whose mean is the
layer's value.

A map that is zero after centring (a dead filter, or a map that is constant along its rows) has
no direction to compare: the pair is skipped and counted, never averaged in as NaN. The authors'
np.nanmean did the same silently.

Everything runs batched in float64 with torch, on CUDA when available. Row centring gives every
map the null vector 1 (A* 1 = 0), so M = A*^T B* is singular with 1 on both sides: each map is
first rotated by a Householder reflection that sends 1 to the first axis, and that (zero) column
dropped, leaving M' = A'^T B' of size (W-1) x (W-1) with the same singular values. Its nuclear
norm is sum sqrt(eigvalsh(M'^T M')) where the estimated error of that allows it (each eigenvalue
is off by ~eps lambda_max, which is fine for large singular values but not for tiny ones; zero
singular values known from the structure of the maps, i.e. rows that are zero in either map or
columns that are zero in a raw map, are exact zeros and cost nothing), and LAPACK's svdvals of M'
otherwise (see :func:`featdyn.engine.linalg.eig_nuclear_norms`). On the CPU the pairs go in
cache-sized groups to every torch thread, each group's decompositions on one core; 'auto' tries
the eigen path on the first groups and keeps it if it passes for most pairs (generic maps),
else uses svdvals (maps of natural images, whose M' has singular values down to 1e-8 sigma_max
and beyond). On GPUs the scaled Newton-Schulz polar iteration runs instead: matmuls only, much
faster there than a batched eigensolver; every path agrees with LAPACK to 1e-10
(tests/test_filterwise.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from featdyn import FeatdynError
from featdyn.engine.linalg import (
    blas_threads,
    bmm,
    cpu_workers,
    eig_nuclear_norms,
    parallel_map,
    polar_nuclear_norm,
    resolve_device,
    svd_nuclear_norms,
)
from featdyn.finite import check_finite
from featdyn.spec.metric_kinds import FILTER_KINDS

METHODS = ("auto", "eig", "svd", "polar")

# A centred map whose norm is below this fraction of the raw map's norm is zero up to rounding
# (a float32 map cannot vary by less than ~6e-8 of its size unless it is constant).
DEAD_RTOL = 1e-10

# Accuracy of the polar iteration: the nuclear norm is low by at most POLAR_TOL * ||M||_*.
POLAR_TOL = 1e-10

# float64 elements per side in one chunk of pairs. CPU: 2 MiB, so that a group's maps and their
# products stay in the cache while ~20 batched operations pass over them (32 MiB chunks cost
# ~1 ms a pair of 224 x 224 maps in memory traffic); CUDA: 512 MiB.
CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}

# 'auto' on the CPU keeps the eigen path when it passes for at least this fraction of the probed
# pairs: it costs ~3/4 of svdvals, and a failing pair pays for both.
EIG_PASS_RATE = 0.8

# Pairs probed by 'auto' (at least; whole chunks) before choosing the path for the rest: a failing
# probe pays for both paths, but only once per layer in a FilterAccumulator.
PROBE_PAIRS = 16


def _centre_rows(maps: torch.Tensor) -> torch.Tensor:
    return maps - maps.mean(-1, keepdim=True)


def _dead(centred: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Maps whose centred version is zero up to rounding (all-zero maps included)."""
    return torch.linalg.matrix_norm(centred) <= DEAD_RTOL * torch.linalg.matrix_norm(raw)


def _unit(maps: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.matrix_norm(maps)
    return maps / torch.where(dead, torch.ones_like(norm), norm)[..., None, None]


def _deflate_with_sums(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (..., H, W) of any float dtype -> float64 (..., H, W - 1): each row in an orthonormal
    basis of the complement of 1, and the row sums (..., H, 1).

    The Householder reflection I - v v^T / (W + sqrt W), v = 1 + sqrt(W) e_1, sends 1 to
    -sqrt(W) e_1; dropping the first coordinate (A 1 / sqrt(W)) leaves the other W - 1, which are
    orthogonal to 1: the row means vanish on the way, so the result is that of the row-centred map
    A* (same Frobenius norm, and A'^T B' has the singular values of A*^T B* but the one that row
    centring always makes 0). Two passes over the map, widening included."""
    w = maps.shape[-1]
    root = math.sqrt(w)
    sums = maps.sum(-1, keepdim=True, dtype=torch.float64)
    shift = (sums + root * maps[..., :1].to(torch.float64)) / (w + root)
    return maps[..., 1:] - shift, sums


def _rank_bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An upper bound of rank(A*^T B*) from the raw maps' zero pattern: M = sum over rows h of
    a*_h b*_h^T counts only rows non-zero in both centred maps (a row is zero once centred exactly
    when it is constant), and the columns of A* lie in the span of the raw map's non-zero columns.
    ReLU maps have many such rows and columns; exact tests only."""
    rows = ((a.amax(-1) > a.amin(-1)) & (b.amax(-1) > b.amin(-1))).sum(-1)
    cols = torch.minimum((a.abs().amax(-2) > 0).sum(-1), (b.abs().amax(-2) > 0).sum(-1))
    return torch.minimum(rows, cols)


def _unit_deflated(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deflated maps over their norm (that of the row-centred map), and whether they are dead:
    that norm at most DEAD_RTOL of the raw map's, ||A||^2 = ||A*||^2 + sum_h (row sum_h)^2 / W."""
    d, sums = _deflate_with_sums(maps)
    norm = torch.linalg.matrix_norm(d)
    raw = (norm**2 + ((sums / math.sqrt(maps.shape[-1]))**2).sum((-2, -1))).sqrt()  # no overflow (check_maps)
    dead = norm <= DEAD_RTOL * raw
    return d / torch.where(dead, torch.ones_like(norm), norm)[..., None, None], dead


def _nuclear(m: torch.Tensor, rank: torch.Tensor | None, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nuclear norms of the deflated products, and where the eigen path's check passed."""
    passed = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    if m.shape[0] == 0 or m.shape[-1] == 0:
        return torch.zeros(m.shape[0], dtype=torch.float64, device=m.device), ~passed
    if method == "polar":
        return polar_nuclear_norm(m, POLAR_TOL), passed
    if method == "svd":
        return svd_nuclear_norms(m), passed
    values, ok = eig_nuclear_norms(m, rank)
    if not bool(ok.all()):
        values[~ok] = svd_nuclear_norms(m[~ok])
    return values, ok


def _procrustes(a: torch.Tensor, b: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(values, valid, the number of valid pairs that passed the eigen path's check); maps of
    any float dtype, computed in float64."""
    ua, dead_a = _unit_deflated(a)
    ub, dead_b = _unit_deflated(b)
    dead = dead_a | dead_b
    m = bmm(ua.mT, ub)
    nuc, passed = _nuclear(m, _rank_bound(a, b) if method == "eig" else None, method)
    values = (1.0 - nuc).clamp(0.0, 1.0)
    return torch.where(dead, torch.zeros_like(values), values), ~dead, int((passed & ~dead).sum())


def procrustes_maps(a: torch.Tensor, b: torch.Tensor, method: str = "eig") -> tuple[torch.Tensor, torch.Tensor]:
    """Procrustes distance of each pair of maps (P, H, W): 1 - ||A*^T B*||_*, in [0, 1], with
    A* = (A - rowmean(A)) / ||A - rowmean(A)||_F. Returns (values, valid); invalid pairs (a map
    zero after centring) have value 0 and valid False. ``method``: 'eig' (eigvalsh with svdvals
    where its error estimate fails), 'svd' or 'polar' (see the module docstring)."""
    values, valid, _ = _procrustes(a, b, method)
    return values, valid


def cka_maps(a: torch.Tensor, b: torch.Tensor, method: str = "eig") -> tuple[torch.Tensor, torch.Tensor]:
    """1 - linear CKA of each pair of maps (P, H, W), the H rows being the observations, after
    the same row centring (CKA's own centring then removes the column means too):

        1 - <Ka, Kb>_F / (||Ka||_F ||Kb||_F),  Ka = Ac Ac^T, Ac = A double-centred.

    Matmuls only (``method`` is unused). Pairs with a map that is zero once double-centred are
    invalid (value 0, valid False)."""
    ac, bc = _centre_rows(a), _centre_rows(b)
    ac, bc = ac - ac.mean(-2, keepdim=True), bc - bc.mean(-2, keepdim=True)
    dead = _dead(ac, a) | _dead(bc, b)
    ka, kb = _unit(ac, dead), _unit(bc, dead)  # scale-free; unit maps keep the products near 1
    ka, kb = ka @ ka.mT, kb @ kb.mT
    num = (ka * kb).sum((-2, -1))
    den = torch.linalg.matrix_norm(ka) * torch.linalg.matrix_norm(kb)
    values = (1.0 - num / torch.where(dead, torch.ones_like(den), den)).clamp(0.0, 1.0)
    return torch.where(dead, torch.zeros_like(values), values), ~dead


MAP_DISTANCES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "procrustes": procrustes_maps, "cka": cka_maps}


def check_maps(a, b) -> None:
    """Refuse map pairs with NaN or inf, and maps so large that their float64 Frobenius norms
    would overflow (|x|^2 H W > 1.8e308: every such pair would otherwise count as dead)."""
    top = max(check_finite(a, "maps of the source (A)"), check_finite(b, "maps of the target (B)"))
    h, w = a.shape[-2:]
    limit = math.sqrt(torch.finfo(torch.float64).max / (h * w)) / 2
    if top > limit:
        raise FeatdynError(f"maps with values up to {top:.3g} overflow float64 map norms (limit {limit:.3g} for "
                           f"{h} x {w} maps); such values cannot be compared")


def check_kind(kind: str, method: str = "auto") -> None:
    if kind not in MAP_DISTANCES:
        raise FeatdynError(f"filter granularity exists for {list(FILTER_KINDS)}, not {kind!r}")
    if method not in METHODS:
        raise FeatdynError(f"nuclear-norm method {method!r}: expected one of {list(METHODS)}")


def map_distances(kind: str, a, b, method: str = "auto", device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of pairs of maps ``a``, ``b`` (..., H, W), numpy or torch, of any float dtype:
    (values, valid), float64 and bool on the CPU, shaped like the leading dimensions.

    Pairs go to ``device`` (default: CUDA when available) in float64 chunks; ``method`` picks the
    nuclear norm: 'eig' (eigvalsh of M'^T M', svdvals where its error estimate fails), 'svd',
    'polar' (Newton-Schulz), 'auto' (polar on CUDA; on the CPU 'eig' if it passes for at least
    :data:`EIG_PASS_RATE` of the first :data:`PROBE_PAIRS` pairs, else 'svd'). On the CPU the
    chunks run on all torch threads at once, one thread each."""
    values, valid, _ = _map_distances(kind, a, b, method, device)
    return values, valid


def _map_distances(kind: str, a, b, method: str, device: torch.device | str | None
                   ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`map_distances`, and the method it used for the pairs after the probe."""
    check_kind(kind, method)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if ta.shape != tb.shape or ta.ndim < 2:
        raise FeatdynError(f"map pairs must have the same shape (..., H, W): got {tuple(ta.shape)} and {tuple(tb.shape)}")
    check_maps(ta, tb)
    dev = resolve_device(device, ta)
    cpu = dev.type == "cpu"
    if method == "auto" and not cpu:
        method = "polar"
    lead, (h, w) = ta.shape[:-2], ta.shape[-2:]
    fa, fb = ta.reshape(-1, h, w), tb.reshape(-1, h, w)
    step = max(1, CHUNK_ELEMENTS.get(dev.type, CHUNK_ELEMENTS["cpu"]) // max(h * w, 1))
    chunks = [(i, min(i + step, fa.shape[0])) for i in range(0, fa.shape[0], step)]

    def run(chunk: tuple[int, int], how: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        ca, cb = fa[chunk[0]:chunk[1]].to(dev), fb[chunk[0]:chunk[1]].to(dev)  # move, then widen on the device
        if kind == "procrustes":
            v, ok, passed = _procrustes(ca, cb, how)  # widens as it deflates
        else:
            (v, ok), passed = MAP_DISTANCES[kind](ca.to(torch.float64), cb.to(torch.float64), how), 0
        return v.cpu(), ok.cpu(), passed

    workers = cpu_workers() if cpu else 1
    done: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    with blas_threads(1):  # small decompositions: one BLAS thread each, the chunks in parallel
        if method == "auto":
            # probe the eigen path on the first chunks, then keep it or switch to svdvals
            probe = chunks[:max(workers, -(-PROBE_PAIRS // step))]
            done = parallel_map(lambda c: run(c, "eig"), probe, workers)
            live = sum(int(d[1].sum()) for d in done)
            method = "eig" if kind != "procrustes" or sum(d[2] for d in done) >= EIG_PASS_RATE * live else "svd"
            chunks = chunks[len(probe):]
        done += parallel_map(lambda c: run(c, method), chunks, workers)
    if not done:
        return torch.zeros(lead, dtype=torch.float64), torch.zeros(lead, dtype=torch.bool), method
    return torch.cat([d[0] for d in done]).reshape(lead), torch.cat([d[1] for d in done]).reshape(lead), method


@dataclass
class FilterScores:
    """Per-class sums of a map distance for each filter of one layer.

    ``sums[k, c]`` adds the distances of filter c over the valid images of class ``classes[k]``;
    ``counts`` counts those images and ``skipped`` the images whose map pair was invalid (dead)."""

    classes: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    skipped: np.ndarray

    def class_means(self) -> np.ndarray:
        """(K, C) mean over each class's valid images; NaN where a class has none (see ``counts``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def per_filter(self) -> np.ndarray:
        """(C,) the paper's S_l: mean over the classes that have a valid image for the filter;
        NaN for a filter that is dead in every image (counted by :meth:`undefined_filters`)."""
        means, has = self.class_means(), self.counts > 0
        n = has.sum(0)
        return np.where(n > 0, np.where(has, means, 0.0).sum(0) / np.maximum(n, 1), np.nan)

    def undefined_filters(self) -> int:
        return int((self.counts.sum(0) == 0).sum())

    def layer_value(self) -> float:
        """Mean of S_l over the filters where it is defined; NaN only if none is."""
        s = self.per_filter()
        return float(s[np.isfinite(s)].mean()) if np.isfinite(s).any() else float("nan")


class FilterAccumulator:
    """Feed (image batch of the source, of the fine-tuned model, labels); read :class:`FilterScores`.

    With ``method`` 'auto' the first batch's probe (see :func:`map_distances`) settles the path
    for the following batches of the layer."""

    def __init__(self, kind: str, method: str = "auto", device: torch.device | str | None = None) -> None:
        check_kind(kind, method)
        self.kind, self.method, self.device = kind, method, device
        self._method = method
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}
        self._skipped: dict[int, np.ndarray] = {}

    def update(self, x, y, labels) -> None:
        """Add a batch: ``x``, ``y`` (B, C, H, W) maps of the same images, ``labels`` (B,) ints."""
        labels = np.asarray(labels).reshape(-1)
        if getattr(x, "ndim", 0) != 4 or len(labels) != x.shape[0]:
            raise FeatdynError(f"expected (B, C, H, W) maps with B = {len(labels)} labels, got shape "
                               f"{tuple(getattr(x, 'shape', ()))}")
        # inputs checked there; with 'auto', the path its probe chose serves the later batches
        values, valid, self._method = _map_distances(self.kind, x, y, self._method, self.device)
        values, valid = values.numpy(), valid.numpy()
        check_finite(values, f"{self.kind} map distances")  # a non-finite value is never averaged in
        for label in np.unique(labels):
            rows = labels == label
            c = values.shape[1]
            k = int(label)
            self._sums[k] = self._sums.get(k, np.zeros(c)) + np.where(valid[rows], values[rows], 0.0).sum(0)
            self._counts[k] = self._counts.get(k, np.zeros(c, np.int64)) + valid[rows].sum(0)
            self._skipped[k] = self._skipped.get(k, np.zeros(c, np.int64)) + (~valid[rows]).sum(0)

    def result(self) -> FilterScores:
        if not self._sums:
            raise FeatdynError("no maps were accumulated")
        classes = np.array(sorted(self._sums))
        return FilterScores(classes, np.stack([self._sums[k] for k in classes]),
                            np.stack([self._counts[k] for k in classes]),
                            np.stack([self._skipped[k] for k in classes]))


def filter_scores(kind: str, x, y, labels, method: str = "auto",
                  device: torch.device | str | None = None) -> FilterScores:
    """One-shot :class:`FilterScores` of two (N, C, H, W) map stacks with per-image ``labels``."""
    acc = FilterAccumulator(kind, method, device)
    acc.update(x, y, labels)
    return acc.result()

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

Everything runs batched in float64 with torch, on CUDA when available, in chunks of pairs. The
nuclear norms use LAPACK's svdvals on CPUs (M = A*^T B* is always singular: A* 1 = 0 after row
centring, so sqrt(eigvalsh(M^T M)) would need its svdvals fallback anyway), and the scaled
Newton-Schulz polar iteration on GPUs, where it is matmuls only and much faster than a batched
eigensolver; the two agree to ~1e-10 (tests/test_filterwise.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import FeatdynError
from .finite import check_finite
from .linalg import chunked, nuclear_norm, polar_nuclear_norm, resolve_device
from .metric_kinds import FILTER_KINDS

METHODS = ("auto", "eig", "svd", "polar")

# A centred map whose norm is below this fraction of the raw map's norm is zero up to rounding
# (a float32 map cannot vary by less than ~6e-8 of its size unless it is constant).
DEAD_RTOL = 1e-10

# Accuracy of the polar iteration: the nuclear norm is low by at most POLAR_TOL * ||M||_*.
POLAR_TOL = 1e-10

# float64 elements per side in one chunk of pairs (CPU: 32 MiB; CUDA: 512 MiB).
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def _centre_rows(maps: torch.Tensor) -> torch.Tensor:
    return maps - maps.mean(-1, keepdim=True)


def _dead(centred: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Maps whose centred version is zero up to rounding (all-zero maps included)."""
    return torch.linalg.matrix_norm(centred) <= DEAD_RTOL * torch.linalg.matrix_norm(raw)


def _unit(maps: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.matrix_norm(maps)
    return maps / torch.where(dead, torch.ones_like(norm), norm)[..., None, None]


def _nuclear(m: torch.Tensor, method: str) -> torch.Tensor:
    if method == "polar":
        return polar_nuclear_norm(m, POLAR_TOL)
    if method == "svd":
        return chunked(lambda b: torch.linalg.svdvals(b).sum(-1), m)
    return nuclear_norm(m)


def procrustes_maps(a: torch.Tensor, b: torch.Tensor, method: str = "eig") -> tuple[torch.Tensor, torch.Tensor]:
    """Procrustes distance of each pair of maps (P, H, W): 1 - ||A*^T B*||_*, in [0, 1], with
    A* = (A - rowmean(A)) / ||A - rowmean(A)||_F. Returns (values, valid); invalid pairs (a map
    zero after centring) have value 0 and valid False."""
    ar, br = _centre_rows(a), _centre_rows(b)
    dead = _dead(ar, a) | _dead(br, b)
    m = _unit(ar, dead).mT @ _unit(br, dead)
    values = (1.0 - _nuclear(m, method)).clamp(0.0, 1.0)
    return torch.where(dead, torch.zeros_like(values), values), ~dead


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
    nuclear norm: 'eig' (eigvalsh of M^T M, svdvals where needed), 'svd', 'polar' (Newton-Schulz),
    'auto' (polar on CUDA, svd elsewhere: row-centred maps always have the null vector 1, so
    M = A*^T B* is singular and 'eig' would fall back to svdvals after paying for eigvalsh)."""
    check_kind(kind, method)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if ta.shape != tb.shape or ta.ndim < 2:
        raise FeatdynError(f"map pairs must have the same shape (..., H, W): got {tuple(ta.shape)} and {tuple(tb.shape)}")
    check_maps(ta, tb)
    dev = resolve_device(device, ta)
    if method == "auto":
        method = "polar" if dev.type == "cuda" else "svd"
    lead, (h, w) = ta.shape[:-2], ta.shape[-2:]
    fa, fb = ta.reshape(-1, h, w), tb.reshape(-1, h, w)
    step = max(1, CHUNK_ELEMENTS.get(dev.type, CHUNK_ELEMENTS["cpu"]) // (h * w))
    values, valid = [], []
    for i in range(0, fa.shape[0], step):
        ca = fa[i:i + step].to(dev).to(torch.float64)  # move, then widen on the device
        cb = fb[i:i + step].to(dev).to(torch.float64)
        v, ok = MAP_DISTANCES[kind](ca, cb, method)
        values.append(v.cpu())
        valid.append(ok.cpu())
    return torch.cat(values).reshape(lead), torch.cat(valid).reshape(lead)


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
    """Feed (image batch of the source, of the fine-tuned model, labels); read :class:`FilterScores`."""

    def __init__(self, kind: str, method: str = "auto", device: torch.device | str | None = None) -> None:
        check_kind(kind, method)
        self.kind, self.method, self.device = kind, method, device
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}
        self._skipped: dict[int, np.ndarray] = {}

    def update(self, x, y, labels) -> None:
        """Add a batch: ``x``, ``y`` (B, C, H, W) maps of the same images, ``labels`` (B,) ints."""
        labels = np.asarray(labels).reshape(-1)
        if getattr(x, "ndim", 0) != 4 or len(labels) != x.shape[0]:
            raise FeatdynError(f"expected (B, C, H, W) maps with B = {len(labels)} labels, got shape "
                               f"{tuple(getattr(x, 'shape', ()))}")
        values, valid = map_distances(self.kind, x, y, self.method, self.device)  # inputs checked there
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

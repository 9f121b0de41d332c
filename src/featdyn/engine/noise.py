"""The noise floor and the permutation null of the layer metrics, from the same streamed engine.

- Between replicates: two fine-tuning chains that differ only in their seed, compared at the same
  epoch, layer by layer. One pass over both stores gives the sufficient statistics of the pair
  (:class:`featdyn.engine.stats.PairStats`: both sides and the cross term, one BLAS syrk of
  [X | Y] per block on a CPU), from which every layer metric is a few C x C decompositions, as
  for the distances to the source: metrics that share statistics share the pass.
- Permutation null: a layer against itself with the probe images permuted (whole images, so every
  image keeps its own positions): X against X[pi]. Its statistics are the source side (the same
  rows, reordered: the same n, sums and Gram matrix) and the cross term sum_i x_i^T x_pi(i); each
  of a few seeded permutations is one more pass over the store. The value says where "unrelated
  features of the same shape and statistics" lie on each metric's scale, at this number of images
  and channels.

The score job turns these into rows of the score files (:func:`floor_rows`, :func:`null_rows`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from featdyn import FeatdynError
from featdyn.atomic import atomic_path
from featdyn.data.stores import check_pair, open_store
from featdyn.engine.readings import describe, read_reading, reading_batches, readings
from featdyn.engine.stats import (
    PairStats,
    SideStats,
    _read_npz,
    load_group_pairs,
    save_group_pairs,
    stream_pair,
)

log = logging.getLogger("featdyn.engine.noise")


# -- between replicates -----------------------------------------------------------------------------

def replicate_pair_stats(path_a: str | os.PathLike, path_b: str | os.PathLike, device: torch.device | str = "cpu",
                         expect: Mapping | None = None, *, attrs_a: Mapping | None = None,
                         attrs_b: Mapping | None = None, tokens: Sequence[str] = ()) -> dict[str, PairStats]:
    """Per-layer statistics of two replicates' stores of the same epoch (both sides and the cross
    term), streamed chunk by chunk; a token layer also in each of ``tokens`` ('cls', 'mean'; keyed
    as :func:`featdyn.engine.readings.readings` says). ``expect`` applies to both stores,
    ``attrs_a`` / ``attrs_b`` to one (its epoch and checkpoint hash)."""
    a = open_store(path_a, {**(expect or {}), **(attrs_a or {})})
    b = open_store(path_b, {**(expect or {}), **(attrs_b or {})})
    check_pair(a, b)
    out = {}
    for key, layer, reading in readings(a, tokens):
        chunk = a.array(layer).chunks[0]
        blocks = ((xa, xb) for (_, xa), (_, xb) in zip(reading_batches(a, layer, reading, chunk),
                                                        reading_batches(b, layer, reading, chunk)))
        try:
            out[key] = stream_pair(blocks, device)
        except FeatdynError as exc:
            raise FeatdynError(f"activation stores {path_a} and {path_b}, layer {describe(layer, reading)}: "
                               f"{exc}") from exc
        log.info("replicates %s: n=%d", key, out[key].n)
    return out


def save_full_pairs(path: str | os.PathLike, pairs: Mapping[str, PairStats]) -> None:
    """Both sides and the cross term of per-layer :class:`PairStats`, to one ``.npz`` (atomically)."""
    arrays: dict[str, np.ndarray] = {"__layers__": np.array(list(pairs))}
    for i, p in enumerate(pairs.values()):
        arrays[f"{i}/n"] = np.array(p.n)
        for side, s in (("x", p.x), ("y", p.y)):
            arrays |= {f"{i}/{side}/{k}": v.cpu().numpy()
                       for k, v in (("shift", s.shift), ("sum", s.sum), ("gram", s.gram), ("sq", s.sq), ("q", s.q))
                       if v is not None}
        arrays |= {f"{i}/{k}": v.cpu().numpy() for k, v in (("xy", p.xy), ("ab", p.ab), ("rxy", p.rxy), ("ryx", p.ryx))
                   if v is not None}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_full_pairs(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, PairStats]:
    z = _read_npz(path)

    def t(key: str, optional: bool = False) -> torch.Tensor | None:
        if optional and key not in z:
            return None
        return torch.as_tensor(z[key], dtype=torch.float64, device=device)

    try:
        out = {}
        for i, layer in enumerate(z["__layers__"]):
            n = int(z[f"{i}/n"])
            x, y = (SideStats(n, t(f"{i}/{s}/shift"), t(f"{i}/{s}/sum"), t(f"{i}/{s}/gram"), t(f"{i}/{s}/sq", True),
                              t(f"{i}/{s}/q", True)) for s in ("x", "y"))
            out[str(layer)] = PairStats(x, y, t(f"{i}/xy"), t(f"{i}/ab", True), t(f"{i}/rxy", True),
                                        t(f"{i}/ryx", True))
        return out
    except KeyError as exc:
        raise FeatdynError(f"statistics file {path} lacks the array {exc}") from exc


# -- permutation null -------------------------------------------------------------------------------

def permutations(n: int, count: int, seed: int) -> np.ndarray:
    """(count, n) seeded permutations of the n probe images."""
    rng = np.random.default_rng([seed, n])
    return np.stack([rng.permutation(n) for _ in range(count)]) if count else np.empty((0, n), np.int64)


def _permuted_blocks(store, layer: str, perm: np.ndarray,
                     reading: str = "patches") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x block, x[perm] block) of a layer's ``reading`` in the store's chunks: the permuted rows are
    read chunk by chunk (checksums verified) and gathered, so memory stays at a few chunks."""
    chunk = store.array(layer).chunks[0]
    cache: dict[int, np.ndarray] = {}
    for start, xb in reading_batches(store, layer, reading, chunk):
        want = perm[start:start + len(xb)]
        for c in np.unique(want // chunk):
            if int(c) not in cache:
                cache[int(c)] = read_reading(store, layer, reading, int(c) * chunk,
                                             min((int(c) + 1) * chunk, store.n))
        yb = np.stack([cache[int(i // chunk)][int(i % chunk)] for i in want])
        # keep the chunks the next blocks still need (a few at a time on average)
        later = set((perm[start + len(xb):] // chunk).tolist())
        for c in [c for c in cache if c not in later]:
            del cache[c]
        yield xb, yb


def null_stats_from_store(path: str | os.PathLike, source: Mapping[str, SideStats], count: int, seed: int,
                          device: torch.device | str = "cpu", expect: Mapping | None = None,
                          tokens: Sequence[str] = ()) -> dict[str, list[PairStats]]:
    """Per layer, the statistics of (X, X[pi]) for ``count`` seeded permutations pi of the probe
    images (:func:`permutations`); X is the store's layer, whose statistics ``source`` already holds.
    A token layer also in each of ``tokens`` (the same permutations: whole images, their tokens
    with them)."""
    store = open_store(path, expect)
    perms = permutations(store.n, count, seed)
    out: dict[str, list[PairStats]] = {}
    for key, layer, reading in readings(store, tokens):
        if key not in source:
            raise FeatdynError(f"source statistics lack layer {describe(layer, reading)}")
        try:
            out[key] = [stream_pair(_permuted_blocks(store, layer, p, reading), device, source=source[key])
                        for p in perms]
        except FeatdynError as exc:
            raise FeatdynError(f"activation store {path}, layer {describe(layer, reading)}, permutation null: "
                               f"{exc}") from exc
        log.info("null %s: %d permutations", key, len(perms))
    return out


def save_null(path: str | os.PathLike, pairs: Mapping[str, Sequence[PairStats]]) -> None:
    save_group_pairs(path, pairs)


def load_null(path: str | os.PathLike, source: Mapping[str, SideStats], count: int,
              device: torch.device | str = "cpu") -> dict[str, list[PairStats]]:
    return load_group_pairs(path, {layer: [s] * count for layer, s in source.items()}, device)


# -- rows of the score files ------------------------------------------------------------------------

# A floor below this is a distance of 0 to rounding (epoch 0: the same backbone in every replicate).
FLOOR_ZERO = 1e-12


def ratio(value: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """value / floor where the floor is a positive distance, NaN where it is 0 to rounding."""
    value, floor = np.asarray(value, float), np.asarray(floor, float)
    ok = floor > FLOOR_ZERO
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ok, value / np.where(ok, floor, 1.0), np.nan)
    return out

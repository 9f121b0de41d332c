"""Bootstrap intervals over the probe images, for every layer distance and every table entry.

The probe images are split into G groups (:func:`featdyn.engine.stats.image_groups`: image i in group
i mod G; with G = the number of images, one image per group). A replicate draws G groups with
replacement (multinomial counts ``w``) and recomputes the distance on that multiset of images:

- layer granularity: from the per-group sufficient statistics, ``GroupStats.weighted(w)`` then the
  metric: exactly the metric of the resampled activations (:mod:`featdyn.engine.stats`);
- filter granularity: from the per-(group, class, filter) sums and counts of the map distances,
  weighted by ``w``, then the class means, the per-filter means and the layer mean, as for the
  point estimate (:class:`featdyn.engine.filterwise.FilterScores`).

The weights depend only on (seed, G, B, dataset): every metric, model, layer and epoch of a
dataset uses the same resamples, so a replicate of a layer average, of a Table 2 entry or of a
difference between layers, epochs, models or metrics resamples the same images throughout. Two
datasets get independent resamples (their probe sets are independent samples).

Intervals (``interval``) describe how much a value moves when other probe images of the same
classes are drawn; Table 2's std, in contrast, is the spread over epochs. The distances are biased
in resamples that repeat images: a resample holds ~63% distinct images, fewer observations per
channel, and the alignment the metrics search for fits noise better (on the demo's deep layers the
resamples of Procrustes sit ~10% below the estimate). So:

- ``centred`` (default): the percentile interval of the replicates shifted by their bias (their
  mean minus the estimate), i.e. centred on the estimate like estimate +- 1.96 standard errors but
  keeping the replicates' skew. It measures the spread due to the choice of images and contains
  the estimate; the bias is reported beside it (the tables' ``bias`` column, the score logs).
- ``percentile``: the plain percentile interval of the replicates, which carries that bias (it
  can then sit beside the estimate).

The module imports no torch at load time (the table jobs read replicates without it); the parts
that compute replicates import the metric and statistics modules when called.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featdyn import FeatdynError
from featdyn.atomic import atomic_path
from featdyn.finite import check_finite

# What a damaged .npz raises (as featdyn.engine.stats reads its statistics files).
NPZ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile)

if TYPE_CHECKING:
    from featdyn.engine.filterwise import FilterScores
    from featdyn.engine.stats import PairStats


INTERVALS = ("centred", "percentile")


@dataclass(frozen=True)
class BootstrapSpec:
    """The ``bootstrap`` config block: B resamples (0: no intervals), the interval level, the seed
    and the number of image groups G."""

    resamples: int = 200
    level: float = 0.95
    seed: int = 0
    groups: int = 16
    interval: str = "centred"

    @classmethod
    def from_config(cls, block: Mapping | None) -> BootstrapSpec:
        spec = cls(**(block or {}))
        if spec.resamples < 0:
            raise FeatdynError(f"bootstrap.resamples: expected an integer >= 0, got {spec.resamples}")
        if not 0.0 < spec.level < 1.0:
            raise FeatdynError(f"bootstrap.level: expected a number in (0, 1), got {spec.level}")
        if spec.groups < 2:
            raise FeatdynError(f"bootstrap.groups: expected an integer >= 2, got {spec.groups}")
        if spec.interval not in INTERVALS:
            raise FeatdynError(f"bootstrap.interval: expected one of {list(INTERVALS)}, got {spec.interval!r}")
        return spec

    @property
    def enabled(self) -> bool:
        return self.resamples > 0

    @property
    def stored_groups(self) -> int:
        """Groups the statistics jobs keep: 0 when intervals are off (nothing to store)."""
        return self.groups if self.enabled else 0

    def describe(self) -> str:
        if not self.enabled:
            return "no bootstrap intervals (bootstrap.resamples: 0)"
        how = "percentile" if self.interval == "percentile" else "percentile interval centred on the estimate,"
        return (f"{self.level:.0%} bootstrap interval over the probe images ({how} {self.resamples} resamples "
                f"of {self.groups} image groups, seed {self.seed})")


def resample_weights(groups: int, resamples: int, seed: int, key: str) -> np.ndarray:
    """(B, G) multinomial counts: replicate b takes group g ``w[b, g]`` times (each row sums to G).
    Seeded by (seed, key): the same for every metric, model and epoch of a dataset (``key``)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples)


def percentile_interval(samples: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``samples`` along ``axis``, ignoring NaN replicates (NaN where every
    replicate is NaN or there are none)."""
    samples = np.asarray(samples, dtype=float)
    shape = samples.shape[:axis] + samples.shape[axis + 1:]
    if samples.shape[axis] == 0:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    tail = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as documented
        lo, hi = np.nanquantile(samples, [tail, 1.0 - tail], axis=axis)
    return lo, hi


SMALL_C = 512  # below this many channels, metrics run on one CPU thread


@contextlib.contextmanager
def small_matrix_threads(channels: int, device) -> Iterator[None]:
    """One torch thread while evaluating metrics of fewer than :data:`SMALL_C` channels on a CPU.

    Small C x C decompositions are latency-bound: one thread is faster, and with two, a second
    thread descheduled on a busy machine makes every LAPACK call wait (pwsm at C = 96 measured
    24 ms with one thread, 900 ms with two, at load 10 on the 2-core VM; benchmarks/README.md)."""
    import torch

    if str(device).startswith("cuda") or channels >= SMALL_C:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bootstrap_interval(samples: np.ndarray, point, level: float, method: str = "centred",
                       axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``method`` interval (module docstring) of an estimate ``point`` from its replicates
    ``samples`` along ``axis`` (``point`` broadcasts against the other axes)."""
    lo, hi = percentile_interval(samples, level, axis)
    if method == "percentile":
        return lo, hi
    if method != "centred":
        raise FeatdynError(f"bootstrap.interval: expected one of {list(INTERVALS)}, got {method!r}")
    shift = np.asarray(point, dtype=float) - bias_free_mean(samples, axis)
    return lo + shift, hi + shift


def bias_free_mean(samples: np.ndarray, axis: int = 0) -> np.ndarray:
    """The replicates' mean (NaN replicates left out): minus the estimate, the bootstrap bias."""
    samples = np.asarray(samples, dtype=float)
    if samples.shape[axis] == 0:
        return np.full(samples.shape[:axis] + samples.shape[axis + 1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(samples, axis=axis)


def layer_replicates(pairs: Sequence[PairStats], weights: np.ndarray, kind: str, params: Mapping) -> np.ndarray:
    """(B,) the metric ``kind`` of each resample of one layer's per-group statistics."""
    import torch

    from featdyn.engine.metrics import DegenerateWarning, from_stats
    from featdyn.engine.stats import GroupStats

    stacked = GroupStats.stack(pairs)
    if weights.shape[1] != stacked.groups:
        raise FeatdynError(f"resample weights for {weights.shape[1]} groups, statistics of {stacked.groups}")
    out = np.empty(len(weights))
    w = torch.as_tensor(weights, dtype=torch.float64, device=stacked.n.device)
    channels = max(stacked.sx.shape[1], stacked.sy.shape[1])
    with small_matrix_threads(channels, stacked.n.device), warnings.catch_warnings():
        # the point estimate already warned; a NaN replicate is counted by the caller
        warnings.simplefilter("ignore", DegenerateWarning)
        for b, stats in enumerate(stacked.weighted_many(w)):
            out[b] = from_stats(kind, stats, **params)
    return out


# -- filter granularity ----------------------------------------------------------------------------

@dataclass
class FilterGroups:
    """Per-(group, class, filter) sums of one layer's map distances over the valid images, the
    counts of those images and of the skipped (dead) ones."""

    classes: np.ndarray  # (K,)
    sums: np.ndarray     # (G, K, C)
    counts: np.ndarray   # (G, K, C)
    skipped: np.ndarray  # (G, K, C)

    @classmethod
    def from_scores(cls, scores: FilterScores, groups: int) -> FilterGroups:
        """Split :class:`FilterScores` accumulated with labels ``class * groups + group``."""
        composite = np.asarray(scores.classes, dtype=np.int64)
        classes = np.unique(composite // groups)
        k = np.searchsorted(classes, composite // groups)
        g = composite % groups
        c = scores.sums.shape[1]
        out = cls(classes, np.zeros((groups, len(classes), c)), *np.zeros((2, groups, len(classes), c), np.int64))
        out.sums[g, k], out.counts[g, k], out.skipped[g, k] = scores.sums, scores.counts, scores.skipped
        return out

    def scores(self, w: np.ndarray | None = None) -> FilterScores:
        """The :class:`FilterScores` of the multiset with group g counted ``w[g]`` times (every
        group once by default: the whole probe set)."""
        from featdyn.engine.filterwise import FilterScores

        w = np.ones(self.sums.shape[0], np.int64) if w is None else np.asarray(w)

        def mix(a: np.ndarray) -> np.ndarray:
            return np.tensordot(w, a, axes=1)

        return FilterScores(self.classes, mix(self.sums), mix(self.counts), mix(self.skipped))

    def replicates(self, weights: np.ndarray) -> np.ndarray:
        """(B,) the layer value (:meth:`FilterScores.layer_value`) of each resample."""
        if weights.shape[1] != self.sums.shape[0]:
            raise FeatdynError(f"resample weights for {weights.shape[1]} groups, filter sums of {self.sums.shape[0]}")
        return np.array([self.scores(w).layer_value() for w in weights])


def save_filter_groups(path: str | os.PathLike, layers: Mapping[str, FilterGroups]) -> None:
    arrays: dict[str, np.ndarray] = {"__layers__": np.array(list(layers))}
    for i, fg in enumerate(layers.values()):
        arrays |= {f"{i}/classes": fg.classes, f"{i}/sums": fg.sums, f"{i}/counts": fg.counts,
                   f"{i}/skipped": fg.skipped}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_filter_groups(path: str | os.PathLike) -> dict[str, FilterGroups]:
    try:
        with np.load(path) as z:
            out = {str(layer): FilterGroups(z[f"{i}/classes"], z[f"{i}/sums"], z[f"{i}/counts"], z[f"{i}/skipped"])
                   for i, layer in enumerate(z["__layers__"])}
    except NPZ_ERRORS as exc:
        raise FeatdynError(f"cannot read filter group file {path}: {type(exc).__name__}: {exc} (truncated or "
                           f"damaged: remove it and rerun the filter_scores job that wrote it)") from exc
    for layer, fg in out.items():
        check_finite(fg.sums, f"filter group file {path}, layer {layer!r}")
    return out


# -- replicate tables ------------------------------------------------------------------------------

@dataclass
class Replicates:
    """Bootstrap replicates of one score table: ``values[b, l, e]`` for layer ``layers[l]`` at
    epoch ``epochs[e]`` (B = 0 when intervals are off), with the interval ``level`` and ``method``."""

    values: np.ndarray
    layers: list[str]
    epochs: list[int]
    level: float
    method: str = "centred"

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, values=self.values, layers=np.array(self.layers), epochs=np.array(self.epochs, np.int64),
                     level=np.array(self.level), method=np.array(self.method))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Replicates:
        # NaN replicates are legitimate (a metric undefined on one resample) and are left out of
        # the intervals; inf is not.
        try:
            with np.load(path) as z:
                reps = cls(z["values"], [str(s) for s in z["layers"]], [int(e) for e in z["epochs"]],
                           float(z["level"]), str(z["method"]))
        except NPZ_ERRORS as exc:
            raise FeatdynError(f"cannot read bootstrap replicates {path}: {type(exc).__name__}: {exc} (truncated "
                               f"or damaged: remove it and rerun the score job that wrote it)") from exc
        if np.isinf(reps.values).any():
            raise FeatdynError(f"bootstrap replicates {path} hold inf values")
        return reps

    def interval(self, samples: np.ndarray, point) -> tuple[np.ndarray, np.ndarray]:
        """The interval of an estimate ``point`` from its replicates ``samples`` (derived from
        :attr:`values`, B first), at this table's level and method."""
        return bootstrap_interval(samples, point, self.level, self.method)

    @property
    def resamples(self) -> int:
        return int(self.values.shape[0])

    def trained(self) -> np.ndarray:
        """(B, L, E') the replicates of epochs >= 1 (epoch 0 compares the source with itself)."""
        keep = [i for i, e in enumerate(self.epochs) if e >= 1]
        return self.values[:, :, keep]

    def layer_average(self) -> np.ndarray:
        """(B, E) the layer-averaged distance of every epoch (NaN layers left out, as in Table 2)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.values, axis=1)

    def table2(self) -> np.ndarray:
        """(B,) the Table 2 entry: the mean over epochs >= 1 of the layer-averaged distance."""
        keep = [i for i, e in enumerate(self.epochs) if e >= 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.layer_average()[:, keep], axis=1)

    def per_layer(self) -> np.ndarray:
        """(B, L) the mean over epochs >= 1 of every layer's distance."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.trained(), axis=2)

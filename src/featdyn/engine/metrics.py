"""Distances between two representations, from their float64 sufficient statistics.

Rows are observations, columns are features. X and Y are column-centred; X* = X / ||X||_F.
Every metric here is a function of the centred scatter matrices Cxx = X^T X, Cyy = Y^T Y and
Cxy = X^T Y (see :mod:`featdyn.engine.stats`), so all of them come from one pass over the data and a
few C x C decompositions.

Each metric is one small function with its math in the docstring, and declares its properties in
:data:`METRICS` (the property tests check each claim both ways).

Conventions shared by all of them:

- Dead units: a column that is zero after centring (a dead ReLU channel) carries no variance and
  changes no value (the ``zero_padding`` invariance). This also makes representations of different
  widths comparable by zero-padding the narrower one, as netrep does.
- Numbers: the statistics must be finite (a FeatdynError otherwise, never a NaN passed on); they
  are rescaled by exact powers of two before any product, so finite statistics of activations as
  large as ~1e150 give the same value as at unit scale instead of overflowing to the maximum.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from featdyn import FeatdynError
from featdyn.engine.linalg import lapack_threads, nuclear_norm, resolve_device, sym_eigh
from featdyn.engine.stats import PairStats, pair_stats
from featdyn.finite import all_finite, describe_nonfinite
from featdyn.spec.metric_kinds import KIND_PARAMS, check_params

# Eigenvalues of a scatter matrix below this fraction of the largest are numerical zeros
# (float64 rounding of the accumulated Gram matrix is ~ C * eps * lambda_max).
EIG_TOL = 1e-12


class DegenerateWarning(UserWarning):
    """A metric is undefined or trivially zero for these inputs."""


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is, and which of its properties the tests must confirm.

    ``invariances`` names the transformations of one representation that leave the value
    unchanged (orthogonal, isotropic_scaling, translation, invertible_linear, zero_padding); the property tests
    check each name both ways: a declared invariance must hold and an undeclared one must change
    the value. ``param_invariances`` adds the invariances that only some parameter values have.
    """

    name: str
    fn: Callable[..., float]
    symmetric: bool
    is_metric: bool  # satisfies the triangle inequality
    invariances: frozenset[str]
    bounds: tuple[float, float]
    params: dict = field(default_factory=dict)
    kind: str = "distance"
    param_invariances: Callable[[dict], frozenset[str]] | None = None
    # bounds that depend on the parameters (debiased CKA: [0, 2], its upper end not reached by
    # orthogonal column spaces, whose unbiased HSIC is not exactly 0)
    param_bounds: Callable[[dict], tuple[float, float]] | None = None

    def bounds_for(self, params: dict | None = None) -> tuple[float, float]:
        """The bounds at these parameter values (defaults filled in)."""
        return self.param_bounds(self.params | (params or {})) if self.param_bounds else self.bounds

    def invariances_for(self, params: dict | None = None) -> frozenset[str]:
        """The invariances at these parameter values (defaults filled in)."""
        extra = self.param_invariances(self.params | (params or {})) if self.param_invariances else frozenset()
        return self.invariances | extra


def _scaled(s: PairStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Cxx, Cyy, Cxy) of :meth:`PairStats.centered`, checked finite and scaled by powers of two,
    Cxx * 2^-2kx, Cyy * 2^-2ky, Cxy * 2^-(kx + ky), so that both traces lie in [1/4, 1).

    Every metric here is invariant to isotropic scaling, and a power of two scales a float64
    exactly: the values are those of the unscaled matrices bit for bit, but no product of traces
    or Frobenius norms (~1e300 each for activations ~1e150) can overflow. Computed once."""
    if "scaled" not in s.cache:
        mats = s.centered()
        for name, m in zip(("Cxx", "Cyy", "Cxy"), mats):
            if not all_finite(m):
                raise FeatdynError(f"the statistics are not finite ({name}: {describe_nonfinite(m)}); the "
                                   f"activations hold NaN or inf, or their squares overflowed float64")
        cxx, cyy, cxy = mats
        traces = [float(torch.trace(cxx)), float(torch.trace(cyy))]
        if not all(math.isfinite(t) for t in traces):
            raise FeatdynError(f"the traces of the scatter matrices overflow float64 ({traces}); the activations "
                               f"are too large to compare")
        kx, ky = (math.ceil(math.frexp(t)[1] / 2) if t > 0 else 0 for t in traces)
        s.cache["scaled"] = (torch.ldexp(cxx, torch.tensor(-2.0 * kx, dtype=cxx.dtype, device=cxx.device)),
                             torch.ldexp(cyy, torch.tensor(-2.0 * ky, dtype=cyy.dtype, device=cyy.device)),
                             torch.ldexp(cxy, torch.tensor(-float(kx + ky), dtype=cxy.dtype, device=cxy.device)))
    return s.cache["scaled"]


def _undefined(what: str) -> float:
    warnings.warn(f"{what}: a representation has zero variance; the distance is undefined (NaN)",
                  DegenerateWarning, stacklevel=3)
    return math.nan


def procrustes(s: PairStats) -> float:
    """Orthogonal Procrustes distance, normalised: 1 - ||X*^T Y*||_*.

    With X* = X / ||X||_F and Y* likewise, Ding et al.'s squared Procrustes distance is
    d^2 = ||X*||^2 + ||Y*||^2 - 2 ||X*^T Y*||_* = 2 - 2 ||X*^T Y*||_*; this returns d^2 / 2, in
    [0, 1] (the range the paper states; its Eq. 2 is garbled). In statistics:
    ||X*^T Y*||_* = ||Cxy||_* / sqrt(tr Cxx tr Cyy). Not a metric (half a squared distance);
    sqrt(2 * value) = d is.
    """
    cxx, cyy, cxy = _scaled(s)
    tx, ty = float(torch.trace(cxx)), float(torch.trace(cyy))
    if tx <= 0 or ty <= 0:
        return _undefined("procrustes")
    # a dead unit's zero row of Cxy changes no singular value: dropped, it keeps the fast path
    return min(max(1.0 - float(nuclear_norm(cxy, drop_zero_lines=True)) / math.sqrt(tx * ty), 0.0), 1.0)


def _eig_side(s: PairStats, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvectors V, eigenvalues lam (numerical zeros set to 0), the mask of kept directions and
    q = diag(V^T C V) of Cxx (side 'x') or Cyy (side 'y'), computed once per statistics object.

    q equals lam in exact arithmetic; measured on the computed V it makes ||phi(X)||_F^2 =
    sum q d^2 the exact trace of phi(X)^T phi(X) for the whitening actually applied, so that a
    representation compared with itself gives cos = 1 to rounding. With lam instead, the
    eigensolver's backward error (eps ||C||) divided by the small eigenvalues leaves ~eps cond(C)
    in cos, and arccos turns that into sqrt(eps cond(C)): 1e-4 rad at cond(X) = 1e5.
    """
    key = f"eig_{side}"
    if key not in s.cache:
        c = _scaled(s)[0 if side == "x" else 1]
        lam, v = sym_eigh(c)
        keep = lam > EIG_TOL * lam[-1].clamp_min(0) * c.shape[0]
        # the same association as the cross term (V^T C) V, so that X against itself rounds alike
        q = torch.diagonal((v.mT @ c) @ v).clamp_min(0)
        s.cache[key] = (v, torch.where(keep, lam, torch.zeros_like(lam)), keep, q)
    return s.cache[key]


def _whitening_weights(lam: torch.Tensor, keep: torch.Tensor, alpha: float) -> torch.Tensor:
    """d = alpha + (1 - alpha) / sqrt(lam') with lam' = r * lam / tr(C..): phi_alpha = V diag(d) V^T.

    r is the rank (the number of kept, non-zero eigenvalues), so lam' has unit mean over the
    directions that hold variance: the whitening depends neither on the scale of the activations
    (netrep whitens with the raw X^T X, whose scale then leaks into the distance for
    0 < alpha < 1) nor on how many dead (all-zero) units the layer has. Normalising by the width C
    instead would shrink lam' by r / C for every dead unit and change the distance.
    Numerically-zero directions get d = 0: they hold no variance to whiten.
    """
    rank = int(keep.sum())
    scaled = lam * (max(rank, 1) / lam[keep].sum().clamp_min(1e-300))
    return torch.where(keep, alpha + (1.0 - alpha) / scaled.clamp_min(1e-300).sqrt(), torch.zeros_like(lam))


def pwsm(s: PairStats, alpha: float = 0.0) -> float:
    """Partial-whitening shape metric (Williams et al. 2021): the angle, in radians, [0, pi/2],

        theta = arccos( ||phi(X)^T phi(Y)||_* / (||phi(X)||_F ||phi(Y)||_F) ),

    where phi(X) = X V diag(alpha + (1 - alpha) lam'^-1/2) V^T partially whitens X with the
    eigen-decomposition V diag(lam) V^T of Cxx, lam' = r_x lam / tr(Cxx) on the r_x = rank(Cxx)
    non-zero eigenvalues (unit mean over them) and d = 0 on the zero ones. Normalising by the rank,
    not by the width C, makes dead units (zero-padding) an invariance for every alpha.
    alpha = 1 is the angular Procrustes distance arccos(1 - procrustes); alpha = 0 whitens fully
    and gives the CCA distance (:func:`cca`). It is a metric for every alpha (the angle between
    phi(X) and the best rotation of phi(Y)). With alpha = 0 and no more centred
    observations (n - 1) than features, every representation of full rank spans the same space:
    the distance is exactly 0 (a warning says so).

    Accuracy: the cosine is good to ~eps cond(Cxx) (the statistics hold the data's Gram matrices,
    whose small eigenvalues carry eps ||C|| of rounding); an angle near 0 carries ~1e-8 (arccos
    of a cosine known to ~eps); directions with eigenvalues below 1e-12 C lam_max are dropped.
    """
    if not 0.0 <= alpha <= 1.0:
        raise FeatdynError(f"pwsm: alpha must lie in [0, 1], got {alpha}")
    cxx, cyy, cxy = _scaled(s)
    if float(torch.trace(cxx)) <= 0 or float(torch.trace(cyy)) <= 0:
        return _undefined("pwsm")
    if alpha == 0.0 and s.n - 1 <= max(cxx.shape[0], cyy.shape[0]):
        warnings.warn(f"pwsm with alpha=0 (cca): {s.n} observations for {max(cxx.shape[0], cyy.shape[0])} "
                      f"features; full whitening makes the distance meaningless (exactly 0 at full rank)",
                      DegenerateWarning, stacklevel=2)
    vx, lx, kx, qx = _eig_side(s, "x")
    vy, ly, ky, qy = _eig_side(s, "y")
    dx, dy = _whitening_weights(lx, kx, alpha), _whitening_weights(ly, ky, alpha)
    m = dx[:, None] * ((vx.mT @ cxy) @ vy) * dy[None, :]
    norm = math.sqrt(float((qx * dx**2).sum()) * float((qy * dy**2).sum()))
    cos = float(nuclear_norm(m)) / norm
    return math.acos(min(max(cos, -1.0), 1.0))


def cca(s: PairStats) -> float:
    """Canonical correlation distance: pwsm with alpha = 0,

        theta = arccos( sum_i rho_i / sqrt(r_x r_y) ),

    rho_i the min(r_x, r_y) canonical correlations, r_x and r_y the ranks of X and Y (their
    numbers of non-dead, linearly independent units). When both ranks agree this is arccos of
    the mean canonical correlation; when they differ, the sum is divided by the geometric mean of
    the ranks, not by the smaller one: the angle between the fully whitened representations,
    which keeps the triangle inequality (with the smaller rank, a representation would be at
    distance 0 from any wider one that contains it). Invariant to any invertible linear map of
    either representation and to dead units."""
    return pwsm(s, alpha=0.0)


def _hsic_terms(s: PairStats) -> tuple[float, float, float]:
    """n (n - 3) times the unbiased HSIC (Song et al. 2012) of the linear kernels K = X X^T and
    L = Y Y^T, for (K, L), (K, K) and (L, L), from streamed statistics instead of n x n matrices.

    With K~, L~ the kernels with their diagonals set to 0 and 1 the ones vector,

        n (n - 3) HSIC_u(K, L) = tr(K~ L~) + (1'K~1)(1'L~1) / ((n - 1)(n - 2)) - 2 / (n - 2) 1'K~L~1,

    and, with a_i = ||x_i||^2, b_i = ||y_i||^2, s_x, s_y the column sums and M = X^T Y:
    tr(K~ L~) = ||M||_F^2 - sum a_i b_i; 1'K~1 = ||s_x||^2 - sum a_i; 1'K~L~1 = sum_i (x_i.s_x - a_i)
    (y_i.s_y - b_i) = s_x' M s_y - s_y.(sum a_i y_i) - s_x.(sum b_i x_i) + sum a_i b_i. The
    estimator is exactly invariant to a translation of X or Y, so the statistics' shifted rows
    serve as they are. Each side is first scaled by a power of two (exact) so that its rows' squared
    norms sum to about 1: fourth powers of activations near 1e75 would overflow otherwise."""
    n = float(s.n)
    tx, ty = float(torch.trace(s.x.gram)), float(torch.trace(s.y.gram))
    kx = math.frexp(tx)[1] if tx > 0 else 0
    ky = math.frexp(ty)[1] if ty > 0 else 0
    fx, fy = 2.0 ** -kx, 2.0 ** -ky  # squared-norm scale of each side (rows scaled by sqrt)

    def hsic(m, sq_kl, sk, sl, tr_k, tr_l, k1l) -> float:
        # m = ||M||_F^2, sq_kl = sum a b, sk / sl = 1'K1 / 1'L1 (uncorrected), tr_k / tr_l = sum a / sum b
        kt, lt = sk - tr_k, sl - tr_l
        return (m - sq_kl) + kt * lt / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * k1l

    sx, sy, gx, gy, m = s.x.sum, s.y.sum, s.x.gram, s.y.gram, s.xy
    kl = hsic(float(torch.linalg.matrix_norm(m)) ** 2 * fx * fy, float(s.ab) * fx * fy,
              float(sx @ sx) * fx, float(sy @ sy) * fy, tx * fx, ty * fy,
              (float(sx @ m @ sy) - float(sy @ s.rxy) - float(sx @ s.ryx) + float(s.ab)) * fx * fy)
    kk = hsic(float(torch.linalg.matrix_norm(gx)) ** 2 * fx * fx, float(s.x.sq) * fx * fx,
              float(sx @ sx) * fx, float(sx @ sx) * fx, tx * fx, tx * fx,
              (float(sx @ gx @ sx) - 2 * float(sx @ s.x.q) + float(s.x.sq)) * fx * fx)
    ll = hsic(float(torch.linalg.matrix_norm(gy)) ** 2 * fy * fy, float(s.y.sq) * fy * fy,
              float(sy @ sy) * fy, float(sy @ sy) * fy, ty * fy, ty * fy,
              (float(sy @ gy @ sy) - 2 * float(sy @ s.y.q) + float(s.y.sq)) * fy * fy)
    return kl, kk, ll


def cka_debiased(s: PairStats) -> float:
    """One minus debiased linear CKA: 1 - HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)), the
    unbiased HSIC estimator (:func:`_hsic_terms`) in place of the plug-in one. For independent
    features it is centred near 0 (1 - CKA near 1) where the plug-in CKA is biased upwards at few
    observations per feature; it can be negative (then 1 - CKA exceeds 1), in [0, 2] by the
    Cauchy-Schwarz inequality of the U-centred inner product. Needs n >= 4 observations and the
    per-observation statistics of :class:`featdyn.engine.stats.Accumulator`."""
    if any(t is None for t in (s.x.sq, s.x.q, s.y.sq, s.y.q, s.ab, s.rxy, s.ryx)):
        raise FeatdynError("debiased cka needs the per-observation statistics (sums of fourth powers of the "
                           "activations); these statistics lack them: accumulated by an older featdyn (recompute "
                           "them), or overflowed float64 (activations of magnitude ~1e75 or more)")
    if s.n < 4:
        return _undefined("cka (debiased): fewer than 4 observations")
    kl, kk, ll = _hsic_terms(s)
    if kk <= 0 or ll <= 0:
        return _undefined("cka (debiased)")
    return min(max(1.0 - kl / math.sqrt(kk * ll), 0.0), 2.0)


def cka(s: PairStats, debiased: bool = False) -> float:
    """One minus linear CKA (Kornblith et al. 2019), in [0, 1]:

        1 - ||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F);

    with ``debiased`` the unbiased HSIC estimator instead (:func:`cka_debiased`), in [0, 2].
    """
    if debiased:
        return cka_debiased(s)
    cxx, cyy, cxy = _scaled(s)
    nx, ny = float(torch.linalg.matrix_norm(cxx)), float(torch.linalg.matrix_norm(cyy))
    if nx <= 0 or ny <= 0:
        return _undefined("cka")
    return min(max(1.0 - float(torch.linalg.matrix_norm(cxy)) ** 2 / (nx * ny), 0.0), 1.0)


# zero_padding: appending dead (all-zero) units to a representation changes nothing.
_SIMILARITY = frozenset({"orthogonal", "isotropic_scaling", "translation", "zero_padding"})


def _cka_bounds(params: dict) -> tuple[float, float]:
    return (0.0, 2.0) if params["debiased"] else (0.0, 1.0)


def _pwsm_invariances(params: dict) -> frozenset[str]:
    """Full whitening (alpha = 0, CCA) removes any invertible linear map; partial whitening does not."""
    return frozenset({"invertible_linear"}) if params["alpha"] == 0 else frozenset()


METRICS: dict[str, MetricInfo] = {
    "procrustes": MetricInfo("procrustes", procrustes, symmetric=True, is_metric=False,
                             invariances=_SIMILARITY, bounds=(0.0, 1.0)),
    "pwsm": MetricInfo("pwsm", pwsm, symmetric=True, is_metric=True, invariances=_SIMILARITY,
                       bounds=(0.0, math.pi / 2), params=KIND_PARAMS["pwsm"], param_invariances=_pwsm_invariances),
    "cka": MetricInfo("cka", cka, symmetric=True, is_metric=False, invariances=_SIMILARITY, bounds=(0.0, 1.0),
                      params=KIND_PARAMS["cka"], param_bounds=_cka_bounds),
    "cca": MetricInfo("cca", cca, symmetric=True, is_metric=True,
                      invariances=_SIMILARITY | {"invertible_linear"}, bounds=(0.0, math.pi / 2)),
}


def info(name: str) -> MetricInfo:
    if name not in METRICS:
        raise FeatdynError(f"unknown metric {name!r}; expected one of {sorted(METRICS)}")
    return METRICS[name]


def from_stats(name: str, stats: PairStats, **params) -> float:
    """The distance ``name`` from precomputed :class:`PairStats`. Non-finite statistics are refused
    (FeatdynError); the value is finite, or NaN with a :class:`DegenerateWarning` (zero variance)."""
    fn, params = info(name).fn, check_params(name, params)
    # a few C x C decompositions and products: one thread keeps them steady on a loaded machine
    with lapack_threads(max(stats.xy.shape), stats.xy.device):
        value = fn(stats, **params)
    cxx, cyy, _ = _scaled(stats)
    if not math.isfinite(value) and float(torch.trace(cxx)) > 0 and float(torch.trace(cyy)) > 0:
        raise FeatdynError(f"{name}: the value is {value} for finite statistics")
    return value


def _check_2d(x, y) -> None:
    if getattr(x, "ndim", 2) != 2 or getattr(y, "ndim", 2) != 2:
        raise FeatdynError("distance() takes 2-D inputs (rows = observations, columns = features)")


def distance(name: str, x, y, device: torch.device | str | None = None, **params) -> float:
    """The distance ``name`` between 2-D representations ``x`` and ``y`` (numpy or torch,
    rows = observations, columns = features), computed in float64 on ``device`` (default: the
    inputs' CUDA device, else CUDA when available, else the CPU)."""
    _check_2d(x, y)
    return from_stats(name, pair_stats(x, y, resolve_device(device, x)), **params)


def distances(x, y, metrics: Mapping[str, Mapping] | Sequence[str] = tuple(METRICS),
              device: torch.device | str | None = None) -> dict[str, float]:
    """Several distances between ``x`` and ``y`` from one pass over the data: ``metrics`` maps a
    label to a block ``{"kind": ..., **params}`` (or lists metric names, with default parameters).
    The statistics and the eigendecompositions are shared."""
    _check_2d(x, y)
    blocks = {m: {"kind": m} for m in metrics} if not isinstance(metrics, Mapping) else metrics
    stats = pair_stats(x, y, resolve_device(device, x))
    return {label: from_stats(b["kind"], stats, **{k: v for k, v in b.items() if k != "kind"})
            for label, b in blocks.items()}

"""Independent float64 references for the metric tests, written from the formulas with numpy/scipy
SVDs of the data matrices (no featdyn code), and the data families the property tests draw from.

The references work on the data, not on Gram matrices, so they do not share the statistics path's
rounding: SVD-based whitening is accurate to eps * cond(X), the Gram path to eps * cond(X)^2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matrices: one torch thread. With two, MKL's OpenMP barrier made each small matmul take
    ~20 ms whenever the other core was busy (this 2-core VM runs several test suites at once)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Singular values below this fraction of the largest are zero (exactly-low-rank data has ~1e-15).
RANK_RTOL = 1e-8


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0, keepdims=True)


def svd_kept(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U and s of the centred data's thin SVD, restricted to the non-zero singular values."""
    u, s, _ = np.linalg.svd(centred(x), full_matrices=False)
    keep = s > RANK_RTOL * s[0]
    return u[:, keep], s[keep]


def nuclear(m: np.ndarray) -> float:
    return float(np.linalg.svd(m, compute_uv=False).sum())


def ref_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """1 - ||X*^T Y*||_*, X* the column-centred X over its Frobenius norm."""
    xs, ys = centred(x), centred(y)
    xs, ys = xs / np.linalg.norm(xs), ys / np.linalg.norm(ys)
    return 1.0 - nuclear(xs.T @ ys)


def ref_cka(x: np.ndarray, y: np.ndarray) -> float:
    """1 - ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) (Kornblith et al.), via the data's SVDs:
    X = Ux Sx Vx^T gives ||X^T X||_F = ||Sx^2|| and ||X^T Y||_F = ||Sx Ux^T Uy Sy||_F."""
    ux, sx = svd_kept(x)
    uy, sy = svd_kept(y)
    cross = np.linalg.norm((sx[:, None] * (ux.T @ uy)) * sy[None, :]) ** 2
    return 1.0 - cross / (np.linalg.norm(sx**2) * np.linalg.norm(sy**2))


def ref_pwsm(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Williams et al.'s angular shape distance after partial whitening of the covariance scaled
    to unit mean non-zero eigenvalue. With Xc = U S V^T (r non-zero singular values) and
    lam' = r s^2 / sum(s^2), phi(X) = Xc V diag(alpha + (1 - alpha) lam'^-1/2) V^T = U diag(w) V^T
    with w = alpha s + (1 - alpha) sqrt(sum(s^2) / r) on the non-zero directions; then
    cos theta = ||diag(wx) Ux^T Uy diag(wy)||_* / (|wx| |wy|). (The rank r, not the width C:
    dead units change nothing.)"""
    def weights(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, s = svd_kept(a)
        return u, alpha * s + (1.0 - alpha) * np.sqrt((s**2).sum() / len(s))

    ux, wx = weights(x)
    uy, wy = weights(y)
    cos = nuclear((wx[:, None] * (ux.T @ uy)) * wy[None, :]) / (np.linalg.norm(wx) * np.linalg.norm(wy))
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def ref_cca(x: np.ndarray, y: np.ndarray) -> float:
    """arccos of the mean canonical correlation: the canonical correlations are the singular
    values of Ux^T Uy (orthonormal bases of the centred column spaces); their sum over
    sqrt(rank X rank Y) is the mean when both ranks agree."""
    ux, _ = svd_kept(x)
    uy, _ = svd_kept(y)
    rho = np.linalg.svd(ux.T @ uy, compute_uv=False)
    return float(np.arccos(np.clip(rho.sum() / np.sqrt(ux.shape[1] * uy.shape[1]), -1.0, 1.0)))


REFERENCES = {
    "procrustes": lambda x, y, **p: ref_procrustes(x, y),
    "cka": lambda x, y, **p: ref_cka(x, y),
    "pwsm": lambda x, y, alpha=0.0: ref_pwsm(x, y, alpha),
    "cca": lambda x, y, **p: ref_cca(x, y),
}


# -- netrep (ahwillia/netrep), reimplemented from its public source for the cross-check -----------

def netrep_whiten(x: np.ndarray, alpha: float, eigval_tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """netrep.utils.whiten(X, alpha, preserve_variance=True): eigh of the raw X^T X, eigenvalues
    clipped at eigval_tol, d = alpha + (1 - alpha) lam^-1/2, rescaled to keep the total variance."""
    if alpha > 1 - eigval_tol:
        return x, np.eye(x.shape[1])
    lam, v = np.linalg.eigh(x.T @ x)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** (-1 / 2)
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2 * np.ones_like(lam))
    d *= np.sqrt(np.sum(lam) / new_var)
    z = (v * d[None, :]) @ v.T
    return x @ z, z


def netrep_linear_metric(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """netrep.metrics.LinearMetric(alpha, center_columns=True, score_method='angular').fit_score:
    centre, partially whiten each side, align with the orthogonal Procrustes rotation
    (U V^T of svd(Xw^T Yw)), then the angle between the aligned matrices."""
    mx, my = x.mean(0), y.mean(0)
    xw, zx = netrep_whiten(x - mx, alpha)
    yw, zy = netrep_whiten(y - my, alpha)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    tx, ty = (x - mx) @ (zx @ u), (y - my) @ (zy @ vt.T)
    corr = np.dot(tx.ravel(), ty.ravel()) / (np.linalg.norm(tx.ravel()) * np.linalg.norm(ty.ravel()))
    return float(np.arccos(np.clip(corr, -1.0, 1.0)))


def unit_mean_eigenvalue(x: np.ndarray) -> np.ndarray:
    """X scaled so that its centred X^T X has unit mean eigenvalue (our pwsm's normalisation when
    X has full column rank, as the netrep comparisons' random data does)."""
    xc = centred(x)
    return x * np.sqrt(x.shape[1] / np.trace(xc.T @ xc))


# -- data families ------------------------------------------------------------------------------

KINDS = ("random", "low_rank", "ill_conditioned", "dead_units")


def _family(kind: str, n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.standard_normal((n, c))
    if kind == "low_rank":
        r = max(2, c // 2)
        return rng.standard_normal((n, r)) @ rng.standard_normal((r, c))
    if kind == "ill_conditioned":
        # singular values spread over 3 decades (covariance condition number 1e6)
        return rng.standard_normal((n, c)) @ (np.logspace(0, -3, c)[:, None] * ortho_group.rvs(c, random_state=rng))
    if kind == "dead_units":
        return _kill(np.maximum(rng.standard_normal((n, c)), 0.0), rng)  # ReLU-like, some units dead
    raise ValueError(kind)


def _kill(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = x.shape[1]
    x[:, rng.choice(c, size=max(1, c // 4), replace=False)] = 0.0
    return x


def make_data(kind: str, n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """n x c data of one family, with a non-zero mean (centring must matter)."""
    return _family(kind, n, c, rng) + rng.normal(0, 3, size=(1, c))


def make_pair(kind: str, n: int, c: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """X of a family and Y = X Q M + noise (Q orthogonal, M anisotropic), of the same family."""
    x = _family(kind, n, c, rng)
    mix = ortho_group.rvs(c, random_state=rng) @ np.diag(rng.uniform(0.5, 2.0, c))
    y = x @ mix + noise * _family(kind, n, c, rng)
    if kind == "dead_units":
        y = _kill(np.maximum(y, 0.0), rng)
    return x + rng.normal(0, 3, size=(1, c)), y + rng.normal(0, 3, size=(1, c))

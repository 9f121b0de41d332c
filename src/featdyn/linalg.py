"""Small float64 linear-algebra kernels shared by the metrics (torch, CPU or CUDA).

Every decomposition runs in float64: in float32 a model compared with itself gave a Procrustes
distance of -3.6e-4 (docs/design.md, "Precision and kernels"). Batched decompositions run in chunks, because
cuSOLVER's batched eigensolver fails on very large batches (65,536 matrices of 14 x 14 at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# eigvalsh of M^T M gives sigma^2; a tiny eigenvalue carries an absolute error of about
# eps * sigma_max^2, so its square root is off by up to sqrt(eps) * sigma_max (1.5e-8). That is
# fine while every eigenvalue is large against eps * lambda_max: with lambda_min / lambda_max
# >= 1e-5 each square root is off by at most ~eps / sqrt(1e-5) * sigma_max (7e-14 sigma_max).
# Otherwise use svdvals, which is accurate to eps * sigma_max per singular value.
EIG_RCOND = 1e-5

# Matrices per call of a batched decomposition (cuSOLVER fails on 65,536 at once).
MAX_BATCH = 4096


def resolve_device(device: torch.device | str | None = None, like: object = None) -> torch.device:
    """The device to compute on: ``device`` if given ('auto' = CUDA when available); else the
    device of ``like`` when it is a CUDA tensor; else CUDA when available; else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if isinstance(like, torch.Tensor) and like.is_cuda:
        return like.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(a, device: torch.device | str | None = None) -> torch.Tensor:
    """A float64 torch tensor from a numpy array or tensor (on ``device`` if given)."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    return t.to(device=device or t.device, dtype=torch.float64)


def chunked(fn: Callable[..., torch.Tensor], *batches: torch.Tensor, size: int = MAX_BATCH) -> torch.Tensor:
    """``fn`` applied to consecutive chunks of ``size`` along dim 0 of ``batches``, concatenated."""
    n = batches[0].shape[0]
    if n <= size:
        return fn(*batches)
    return torch.cat([fn(*(b[i:i + size] for b in batches)) for i in range(0, n, size)])


def _nuclear_norm_eig(m: torch.Tensor, rcond: float) -> torch.Tensor:
    gram = m.mT @ m if m.shape[-1] <= m.shape[-2] else m @ m.mT
    lam = torch.linalg.eigvalsh(gram)
    good = lam[..., 0] >= rcond * lam[..., -1]
    out = lam.clamp_min(0).sqrt().sum(-1)
    if not bool(good.all()):
        bad = ~good
        out[bad] = torch.linalg.svdvals(m[bad]).sum(-1)
    return out


def nuclear_norm(m: torch.Tensor, rcond: float = EIG_RCOND) -> torch.Tensor:
    """Sum of singular values of ``m`` (..., p, q), float64, to ~1e-13 relative.

    Uses sqrt(eigvalsh(M^T M)) on the smaller side when the spectrum allows it (an order of
    magnitude faster than an SVD on GPUs, 2x on CPUs), and svdvals for the matrices where it does
    not (lambda_min / lambda_max < ``rcond``). Batches run in chunks of :data:`MAX_BATCH`.
    """
    m = m.to(torch.float64)
    if m.ndim == 2:
        return _nuclear_norm_eig(m[None], rcond)[0]
    lead = m.shape[:-2]
    flat = m.reshape(-1, *m.shape[-2:])
    return chunked(lambda b: _nuclear_norm_eig(b, rcond), flat).reshape(lead)


def polar_schedule(size: int, tol: float) -> list[float]:
    """Scalings alpha_k of the scaled Newton-Schulz polar iteration (see :func:`polar_nuclear_norm`).

    Singular values of X_0 = M / ||M||_F lie in (0, 1]; those below l_0 = tol / (2 * size) are
    not tracked (together they hold at most tol / 2 of ||M||_*). The iteration
    x <- 1.5 (alpha x) - 0.5 (alpha x)^3 with alpha = sqrt(3 / (1 + l + l^2)) maps [l, 1] onto
    [l', 1] with l' = g(alpha l) (alpha puts l and 1 at equal heights on either side of the cubic's
    maximum, which lies inside the interval), so l grows by ~2.6x per step while small and then
    converges quadratically; it stops when 1 - l <= tol / 2. ~35 steps for size 224, tol 1e-10.
    """
    lo, out = tol / (2 * size), []
    while 1.0 - lo > tol / 2:
        a = math.sqrt(3.0 / (1.0 + lo + lo * lo))
        out.append(a)
        y = a * lo
        lo = 1.5 * y - 0.5 * y**3
    return out


def polar_nuclear_norm(m: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """||M||_* for a batch (B, p, q) by a scaled Newton-Schulz polar iteration: matmuls only.

    X_0 = M / ||M||_F; each step X <- X (a I - b X^T X) keeps the singular vectors of M and sends
    every singular value towards 1 (see :func:`polar_schedule`); then ||M||_* = tr(X^T M), up to
    sum_i sigma_i (1 - f(sigma_i)) >= 0. With the schedule for ``tol``, the result is low by at
    most tol * ||M||_* in exact arithmetic (a lower bound, never above the true value). About 70
    batched matmuls of q x q: on a GPU 20-50x faster than a batched float64 eigensolver, on a CPU
    ~10x slower (use :func:`nuclear_norm` there).
    """
    m = m.to(torch.float64)
    if m.shape[-1] > m.shape[-2]:  # iterate on the thin side: X^T X is then the small Gram matrix
        m = m.mT
    fro = torch.linalg.matrix_norm(m)
    safe = torch.where(fro > 0, fro, torch.ones_like(fro))
    x = m / safe[..., None, None]
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand(*m.shape[:-2], -1, -1)
    for a in polar_schedule(m.shape[-1], tol):
        # x (a * 1.5 I - 0.5 a^3 x^T x): one Gram matmul, one update matmul.
        p = torch.baddbmm(1.5 * a * eye, x.mT, x, alpha=-0.5 * a**3) if x.ndim == 3 else \
            1.5 * a * eye - 0.5 * a**3 * (x.mT @ x)
        x = x @ p
    out = (x * m).sum((-2, -1))
    return torch.where(fro > 0, out, torch.zeros_like(out))


def sym_eigh(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix, symmetrised first against rounding drift."""
    return torch.linalg.eigh(0.5 * (c + c.mT))

"""Small float64 linear-algebra kernels shared by the metrics (torch, CPU or CUDA).

Every decomposition runs in float64: in float32 a model compared with itself gave a Procrustes
distance of -3.6e-4 (docs/design.md, "Precision and kernels"). Batched decompositions run in chunks, because
cuSOLVER's batched eigensolver fails on very large batches (65,536 matrices of 14 x 14 at once).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from featdyn import FeatdynError

try:  # limits numpy's BLAS threads (OpenBLAS); without it numpy keeps its own thread count
    from threadpoolctl import ThreadpoolController, threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is pinned in requirements.txt
    ThreadpoolController = threadpool_limits = None

# eigvalsh of M^T M gives sigma^2; a tiny eigenvalue carries an absolute error of about
# eps * sigma_max^2, so its square root is off by up to sqrt(eps) * sigma_max (1.5e-8). That is
# fine while every eigenvalue is large against eps * lambda_max: with lambda_min / lambda_max
# >= 1e-5 each square root is off by at most ~eps / sqrt(1e-5) * sigma_max (7e-14 sigma_max).
# Otherwise use svdvals, which is accurate to eps * sigma_max per singular value.
EIG_RCOND = 1e-5

# Matrices per call of a batched decomposition (cuSOLVER fails on 65,536 at once).
MAX_BATCH = 4096

# Error model of sqrt(eigvalsh(M^T M)) used by :func:`eig_nuclear_norms`: every eigenvalue of
# the computed Gram matrix is taken to be off by up to EIG_ERROR * eps * lambda_max. Measured
# against LAPACK's svdvals on random, low-rank, graded (sigma down to 1e-10 sigma_max), smooth
# and real ReLU maps (MobileNetV2 on photographs) of 14 to 224 px, the true errors stayed below
# 0.8 eps * lambda_max per eigenvalue (and did not grow with the size): a 10x margin.
EIG_ERROR = 8.0

# A sum of square roots whose estimated error exceeds this is recomputed with svdvals.
EIG_BUDGET = 1e-11

# Square matrices up to this size are decomposed on one thread (see :func:`lapack_threads`).
SMALL_LAPACK = 1024


def resolve_device(device: torch.device | str | None = None, like: object = None) -> torch.device:
    """The device to compute on: ``device`` if given ('auto' = CUDA when available); else the
    device of ``like`` when it is a CUDA tensor; else CUDA when available; else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if isinstance(like, torch.Tensor) and like.is_cuda:
        return like.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(requested: str = "auto") -> torch.device:
    """The config's ``device`` ('auto', 'cpu', 'cuda[:k]'); asking for CUDA without a GPU is an error.

    Here, not in :mod:`featdyn.nets.training`, so that the statistics jobs choose their device without
    importing torchvision (whose import pulls in torch._dynamo: ~4 s a job on a 2-core CPU)."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FeatdynError(f"device: {requested!r} requested but torch sees no CUDA GPU here "
                           f"(use 'auto' or 'cpu')")
    return resolve_device(requested)


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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch (OpenMP/MKL) threads, then restore the previous count."""
    old = torch.get_num_threads()
    n = max(1, int(n))
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


@contextmanager
def lapack_threads(size: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """One CPU thread for the decompositions of matrices up to :data:`SMALL_LAPACK` wide.

    On a loaded machine MKL's OpenMP barrier makes every small call wait for a descheduled
    thread: 512 x 512 decompositions measured 0.21-2.10 s with two threads against 0.29-0.36 s
    with one. Small LAPACK calls gain little from a second thread even on an idle machine."""
    if torch.device(device).type == "cpu" and size <= SMALL_LAPACK:
        with torch_threads(1):
            yield
    else:
        yield


def cpu_workers() -> int:
    """Worker threads for independent CPU decompositions: the torch thread count (the job's)."""
    return max(1, torch.get_num_threads())


@functools.cache
def _blas_controller():
    # inspecting the loaded libraries costs ~2 ms; what they are does not change once numpy is in
    return ThreadpoolController()


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with numpy's BLAS (OpenBLAS) on ``n`` threads (no-op without threadpoolctl)."""
    if threadpool_limits is None:
        yield
    else:
        with _blas_controller().limit(limits=max(1, int(n)), user_api="blas"):
            yield


def parallel_map(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(item) for item in items]`` on ``workers`` threads, each running torch and numpy's
    BLAS on one thread.

    Batched LAPACK calls run their matrices one after the other on one core (neither MKL nor
    OpenBLAS parallelises a 224 x 224 eigensolver usefully); independent slices of the batch on
    separate threads (torch and numpy release the GIL) use every core, and no call waits at an
    OpenMP barrier for a thread that a busy machine has descheduled."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with torch_threads(1), blas_threads(1):
        return list(_pool(workers).map(fn, items))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    # long-lived threads: OpenBLAS and MKL keep a work buffer for every thread that ever called
    # them (a fresh pool per call grew the peak memory of the statistics by ~60 MiB)
    return ThreadPoolExecutor(workers, thread_name_prefix="featdyn")


# On the CPU the batched products and decompositions go through numpy (OpenBLAS and its
# LAPACK): on this project's machine (AMD EPYC) MKL, torch's CPU BLAS, was slower for every one
# of them on one core, at 224 x 224: matmul 0.72 vs 0.60 ms, svdvals 3.84 vs 3.43 ms, eigvalsh
# 2.27 vs 1.88 ms. CPU tensors share their memory with the arrays; CUDA tensors stay in torch.

def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched ``a @ b``."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


def eigvalsh(g: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of each symmetric matrix of a batch (its lower triangle is read)."""
    if g.device.type == "cpu":
        return torch.from_numpy(np.linalg.eigvalsh(g.numpy()))
    return chunked(torch.linalg.eigvalsh, g)


def svdvals(m: torch.Tensor) -> torch.Tensor:
    """Singular values of each matrix of a batch (LAPACK's gesdd; cuSOLVER on CUDA, in chunks)."""
    if m.device.type == "cpu":
        return torch.from_numpy(np.linalg.svd(m.numpy(), compute_uv=False))
    return chunked(torch.linalg.svdvals, m)


def eig_nuclear_norms(m: torch.Tensor, rank: torch.Tensor | None = None,
                      budget: float = EIG_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """sum sqrt(eigvalsh(M^T M)) of each matrix of a batch ``m`` (B, p, q), float64, and whether
    it is accurate: (values, ok), ok False where the estimated error exceeds ``budget``.

    An eigenvalue lambda of the computed Gram matrix is off by up to
    delta = EIG_ERROR eps lambda_max, so its square root by delta / (2 sqrt(lambda)) (at
    most sqrt(delta), for a lambda near 0): fine for the large singular values, hopeless for the
    small ones (1e-8 sigma_max each when sigma = 0). ``rank`` (B,), upper bounds of the ranks
    known from the structure of the data, marks the smallest k - rank eigenvalues as exact zeros:
    they count as 0, with no error."""
    m = m.to(torch.float64)
    lam = eigvalsh(bmm(m.mT, m) if m.shape[-1] <= m.shape[-2] else bmm(m, m.mT))
    k = lam.shape[-1]
    lmax = lam[..., -1:].clamp_min(0)
    if rank is not None:
        zero = torch.arange(k, device=lam.device) < (k - rank.to(lam.device).clamp(0, k))[..., None]
        lam = lam.masked_fill(zero, 0.0)
    else:
        zero = torch.zeros_like(lam, dtype=torch.bool)
    delta = EIG_ERROR * torch.finfo(torch.float64).eps * lmax
    root = lam.clamp_min(0).sqrt()
    err = torch.minimum(delta / (2 * root).clamp_min(torch.finfo(torch.float64).tiny), delta.sqrt())
    err = err.masked_fill(zero, 0.0).sum(-1)
    return root.sum(-1), err <= budget


def svd_nuclear_norms(m: torch.Tensor) -> torch.Tensor:
    """Sum of LAPACK's (cuSOLVER's) singular values of each matrix of ``m`` (B, p, q)."""
    return svdvals(m.to(torch.float64)).sum(-1)


def _without_zero_lines(m: torch.Tensor) -> torch.Tensor:
    """``m`` (B, p, q) without the rows and columns that are zero in every matrix of the batch.

    The singular values are the same, but the Gram matrix loses the exact zero eigenvalues that
    would send it to the SVD: a dead unit (a channel constant over the probe set, common after a
    ReLU) makes its row of X^T Y exactly zero, and an SVD of a 2048 x 2048 matrix costs ~4x the
    eigenvalue path on a CPU (benchmarks/README.md, "Dead units")."""
    nz = m != 0
    rows, cols = nz.any(-1).any(0), nz.any(-2).any(0)
    if bool(rows.all()) and bool(cols.all()):
        return m
    return m[:, rows][:, :, cols]


def _nuclear_norm_eig(m: torch.Tensor, rcond: float, drop_zero_lines: bool = False) -> torch.Tensor:
    if drop_zero_lines:
        m = _without_zero_lines(m)
        if 0 in m.shape[-2:]:  # every line is zero
            return torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    gram = m.mT @ m if m.shape[-1] <= m.shape[-2] else m @ m.mT
    lam = torch.linalg.eigvalsh(gram)
    good = lam[..., 0] >= rcond * lam[..., -1]
    out = lam.clamp_min(0).sqrt().sum(-1)
    if not bool(good.all()):
        bad = ~good
        out[bad] = torch.linalg.svdvals(m[bad]).sum(-1)
    return out


def nuclear_norm(m: torch.Tensor, rcond: float = EIG_RCOND, drop_zero_lines: bool = False) -> torch.Tensor:
    """Sum of singular values of ``m`` (..., p, q), float64, to ~1e-13 relative.

    Uses sqrt(eigvalsh(M^T M)) on the smaller side when the spectrum allows it (an order of
    magnitude faster than an SVD on GPUs, 2x on CPUs), and svdvals for the matrices where it does
    not (lambda_min / lambda_max < ``rcond``). Batches run in chunks of :data:`MAX_BATCH`.

    ``drop_zero_lines``: first drop the rows and columns zero in the whole batch (dead units), which
    change no singular value, so that they do not send the matrix to the SVD. For a value read
    as it is (Procrustes); not for one read through arccos near 1 (PWSM of a layer against itself),
    which turns the eigenvalue path's ~1e-14 relative error into an angle of ~1e-7, where the SVD
    of a whitened matrix with dropped directions gives 0.
    """
    m = m.to(torch.float64)
    with lapack_threads(max(m.shape[-2:]), m.device):
        if m.ndim == 2:
            return _nuclear_norm_eig(m[None], rcond, drop_zero_lines)[0]
        lead = m.shape[:-2]
        flat = m.reshape(-1, *m.shape[-2:])
        return chunked(lambda b: _nuclear_norm_eig(b, rcond, drop_zero_lines), flat).reshape(lead)


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
    """Eigen-decomposition of a symmetric matrix, symmetrised first against rounding drift (on one
    thread up to :data:`SMALL_LAPACK` wide, see :func:`lapack_threads`)."""
    with lapack_threads(c.shape[-1], c.device):
        return torch.linalg.eigh(0.5 * (c + c.mT))

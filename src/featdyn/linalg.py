"""Small float64 linear-algebra kernels shared by the metrics (torch, CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

# eigvalsh of M^T M gives sigma^2; a tiny eigenvalue carries an absolute error of about
# eps * sigma_max^2, so its square root is off by up to sqrt(eps) * sigma_max (1.5e-8). That is
# fine while every eigenvalue is large against eps * lambda_max: with lambda_min / lambda_max
# >= 1e-5 the summed error stays below ~1e-10 for C <= 4096. Otherwise use svdvals, which is
# accurate to eps * sigma_max per singular value.
EIG_RCOND = 1e-5


def as_tensor(a, device: torch.device | str | None = None) -> torch.Tensor:
    """A float64 torch tensor from a numpy array or tensor (on ``device`` if given)."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    return t.to(device=device or t.device, dtype=torch.float64)


def nuclear_norm(m: torch.Tensor, rcond: float = EIG_RCOND) -> torch.Tensor:
    """Sum of singular values of ``m`` (..., p, q), float64.

    Uses sqrt(eigvalsh(M^T M)) on the smaller side when the spectrum allows it (an order of
    magnitude faster than an SVD on GPUs), and svdvals for the matrices where it does not.
    """
    m = m.to(torch.float64)
    gram = m.mT @ m if m.shape[-1] <= m.shape[-2] else m @ m.mT
    lam = torch.linalg.eigvalsh(gram)
    good = lam[..., 0] >= rcond * lam[..., -1]
    out = lam.clamp_min(0).sqrt().sum(-1)
    if not bool(good.all()):
        bad = ~good
        out = out.clone()
        out[bad] = torch.linalg.svdvals(m[bad]).sum(-1)
    return out


def sym_eigh(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix, symmetrised first against rounding drift."""
    return torch.linalg.eigh(0.5 * (c + c.mT))

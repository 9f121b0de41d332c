"""Procrustes of a layer with dead units: the cost of a zero row of X^T Y.

A dead unit (a channel constant over the probe set, common after a ReLU) makes its row of the
cross-covariance exactly zero. Without dropping such rows, the Gram matrix of X^T Y has exact zero
eigenvalues and `featdyn.engine.linalg.nuclear_norm` falls back from its eigenvalue path to an SVD;
with them dropped (what the Procrustes metric does), it stays on the eigenvalue path. Timed in the
same run, each the best of ``--repeats``, on one BLAS thread (as the score jobs run a layer):

- alive: Procrustes of a layer without dead units (the baseline);
- dead: the same layer with ``--dead`` dead units (the same on both sides), as featdyn computes it now;
- dead, kept: the same statistics with the zero lines kept (the path before), for the ratio.

    PYTHONPATH=src tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_dead_units.py [--channels 512 2048]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bootstrap import best_of  # noqa: E402 - the same best-of-n wall timer

from featdyn.engine import metrics  # noqa: E402
from featdyn.engine.linalg import nuclear_norm  # noqa: E402
from featdyn.engine.stats import pair_stats  # noqa: E402


def layer(n: int, c: int, dead: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU features of ``n`` observations x ``c`` channels and a perturbed copy (the layer after
    some fine-tuning), the same ``dead`` channels zero everywhere in both (a unit dead in the
    source model that stays dead)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = (x + 0.5 * torch.randn(n, c, generator=g, dtype=torch.float64)).relu()
    x = x.relu()
    x[:, :dead] = 0.0
    y[:, :dead] = 0.0
    return x, y


def kept(s) -> float:
    """Procrustes as before: the zero lines stay in (the SVD path)."""
    cxx, cyy, cxy = metrics._scaled(s)
    tx, ty = float(torch.trace(cxx)), float(torch.trace(cyy))
    return 1.0 - float(nuclear_norm(cxy)) / (tx * ty) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--observations", type=int, default=6000)
    ap.add_argument("--dead", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread, "
          f"load {os.getloadavg()[0]:.1f}; {args.observations} observations, {args.dead} dead units")
    for c in args.channels:
        alive = pair_stats(*layer(args.observations, c, 0))
        dead = pair_stats(*layer(args.observations, c, args.dead))
        t_alive = best_of(lambda s=alive: metrics.procrustes(s), args.repeats)
        t_dead = best_of(lambda s=dead: metrics.procrustes(s), args.repeats)
        t_kept = best_of(lambda s=dead: kept(s), args.repeats)
        diff = abs(metrics.procrustes(dead) - kept(dead))
        print(f"  {c} channels: alive {t_alive:.3f} s, dead {t_dead:.3f} s, dead kept {t_kept:.3f} s; "
              f"dead / alive {t_dead / t_alive:.2f}, kept / dropped {t_kept / t_dead:.2f}; "
              f"|value difference| {diff:.1e}")


if __name__ == "__main__":
    main()

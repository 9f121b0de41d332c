"""Bootstrap over the probe images: what it adds, as ratios against a baseline measured in the same run.

    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_bootstrap.py [--groups 16] [--resamples 200]

1. Statistics jobs: one pass of the float64 accumulator over the demo's five MobileNetV2 layers
   (64 px, 80 probe images; C = 32, 24, 32, 64, 96) against the same pass that also keeps the
   statistics of every image group (what `layer_stats` does when intervals are on).
2. Score jobs: the three layer metrics of the demo (procrustes, pwsm alpha = 0, cka) at those
   layers, for one epoch: the point estimates against B resamples (a weighted sum of the group
   statistics and one metric evaluation each).
3. One resample against one point estimate at C = 512 and 2048 (n = 4 C rows, G groups): the
   weighted sum of G group matrices is the only extra; the metric's decompositions dominate.
Importable with torch and numpy alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn.engine.bootstrap import layer_replicates, resample_weights, small_matrix_threads  # noqa: E402
from featdyn.engine.metrics import from_stats  # noqa: E402
from featdyn.engine.stats import Accumulator, GroupAccumulator, GroupStats, image_groups, pair_stats  # noqa: E402

DEMO_LAYERS = {"features.0": (32, 32), "features.3": (24, 16), "features.6": (32, 8), "features.10": (64, 4),
               "features.13": (96, 4)}
METRICS = {"procrustes": {}, "pwsm": {"alpha": 0.0}, "cka": {}}


def maps(n: int, c: int, hw: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, c, hw, hw)), 0).astype(np.float32)
    mix = (np.eye(c) + 0.3 * rng.normal(size=(c, c)) / np.sqrt(c)).astype(np.float32)
    y = np.maximum(np.einsum("nchw,cd->ndhw", x, mix) + 0.2 * rng.normal(size=x.shape), 0).astype(np.float32)
    return x, y


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def stats_pass(data, groups: int, chunk: int = 32) -> list:
    """One epoch's statistics of every layer, streamed in store chunks; with groups > 0 the group
    statistics too (source groups first, as the workflow keeps them)."""
    out = []
    for x, y in data.values():
        acc = Accumulator("cpu")
        gacc = None
        if groups:
            src = GroupAccumulator(image_groups(len(x), groups))
            for s in range(0, len(x), chunk):
                src.update(s, x[s:s + chunk])
            gacc = GroupAccumulator(image_groups(len(x), groups), x_shift=src.sides()[0].shift, x_gram=False)
        for s in range(0, len(x), chunk):
            acc.update(x[s:s + chunk], y[s:s + chunk])
            if gacc is not None:
                gacc.update(s, x[s:s + chunk], y[s:s + chunk])
        pairs = gacc.pairs() if gacc is not None else None
        if pairs is not None:
            for p, side in zip(pairs, src.sides()):
                p.x = side
        out.append((acc.pair(), pairs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; G = {args.groups}, B = {args.resamples}, "
          f"N = {args.images} probe images")

    data = {k: maps(args.images, c, hw, i) for i, (k, (c, hw)) in enumerate(DEMO_LAYERS.items())}
    plain = best_of(lambda: stats_pass(data, 0), args.repeats)
    grouped = best_of(lambda: stats_pass(data, args.groups), args.repeats)
    print(f"1. statistics, 5 demo layers: plain {plain * 1e3:.1f} ms, with groups {grouped * 1e3:.1f} ms "
          f"(x{grouped / plain:.2f})")

    stats = stats_pass(data, args.groups)
    weights = resample_weights(min(args.groups, args.images), args.resamples, 0, "bench")
    def points(kind: str, params: dict) -> list[float]:
        """The point estimates as the score job computes them (fresh decompositions, the same
        thread policy as the resamples)."""
        out = []
        for p, _ in stats:
            p.cache.clear()
            with small_matrix_threads(max(p.xy.shape), "cpu"):
                out.append(from_stats(kind, p, **params))
        return out

    for kind, params in METRICS.items():
        point = best_of(lambda: points(kind, params), args.repeats)
        boot = best_of(lambda: [layer_replicates(g, weights, kind, params) for _, g in stats], 1)
        print(f"2. {kind:10s} one epoch, 5 layers: point {point * 1e3:.1f} ms, {args.resamples} resamples "
              f"{boot:.2f} s (x{boot / point:.0f}, i.e. {boot / point / args.resamples:.2f} points per resample)")

    for c in (512, 2048):
        rng = np.random.default_rng(c)
        x = rng.normal(size=(4 * c, c))
        y = x + 0.5 * rng.normal(size=x.shape)
        ids = image_groups(len(x), args.groups)
        src = GroupAccumulator(ids)
        src.update(0, x)
        tgt = GroupAccumulator(ids, x_shift=src.sides()[0].shift, x_gram=False)
        tgt.update(0, x, y)
        pairs = tgt.pairs()
        for p, side in zip(pairs, src.sides()):
            p.x = side
        stacked = GroupStats.stack(pairs)
        whole = pair_stats(x, y)
        w = torch.as_tensor(resample_weights(args.groups, 1, 0, "bench")[0], dtype=torch.float64)
        point = best_of(lambda: (whole.cache.clear(), from_stats("procrustes", whole)), args.repeats)
        one = best_of(lambda: from_stats("procrustes", stacked.weighted(w)), args.repeats)
        mix = best_of(lambda: stacked.weighted(w), args.repeats)
        print(f"3. C = {c}: procrustes point {point * 1e3:.0f} ms, one resample {one * 1e3:.0f} ms "
              f"(x{one / point:.2f}; the weighted sum of {args.groups} groups {mix * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()

"""Cost of the noise floor and the permutation null against the distances to the source, on the same
stores in the same run.

Four stores of one layer (source = epoch 0, epoch e of replicate 0, epoch e of replicate 1; float32,
zstd-1, as `extract` writes them) with smooth, correlated ReLU maps. Timed, each the best of
``--repeats``:

- source: what `layer_stats` does per epoch (the source's side is shared): the cross statistics of
  (source store, epoch store), then every layer metric (procrustes, pwsm 0.5, cka, cca,
  debiased cka);
- pair: what `replicate_stats` + the score job do per replicate pair and epoch: the full statistics
  of (replicate 0, replicate 1) at epoch e, then the same metrics;
- null: what `null_stats` + the score job do per permutation (once per model and dataset): the
  cross term of (source, source with the images permuted), then the metrics.

Ratios are pair / source and null / source (per permutation). Not asserted anywhere.

    PYTHONPATH=src tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_noise.py [--images 64 --channels 256 --size 28]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np
import torch
from bench_bootstrap import best_of  # the same best-of-n wall timer

from featdyn.data.stores import StoreWriter, open_store
from featdyn.engine.metrics import from_stats
from featdyn.engine.noise import null_stats_from_store, replicate_pair_stats
from featdyn.engine.similarity import pair_stats_from_stores, source_stats_from_store

METRICS = [("procrustes", {}), ("pwsm", {"alpha": 0.5}), ("cka", {}), ("cca", {}), ("cka", {"debiased": True})]
LAYER = "layer"


def maps(n: int, c: int, size: int, base: np.ndarray | None, drift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if base is None:
        z = rng.standard_normal((n, c, size, size)).astype(np.float32)
        for axis in (2, 3):  # a little spatial smoothness, as in real feature maps
            z = (z + np.roll(z, 1, axis) + np.roll(z, -1, axis)) / 3
        mix = rng.standard_normal((c, c)).astype(np.float32) / np.sqrt(c)
        return np.maximum(np.einsum("nchw,cd->ndhw", z, mix), 0)
    return np.maximum(base + drift * rng.standard_normal(base.shape).astype(np.float32), 0)


def write(path: str, values: np.ndarray, epoch: int, chunk: int = 32) -> None:
    n = len(values)
    with StoreWriter(path, n, [LAYER], {"epoch": epoch, "model": "bench", "dataset": "bench"}, chunk) as w:
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            w.write(lo, {LAYER: values[lo:hi]}, np.zeros(hi - lo, np.int64), np.arange(lo, hi))


def metrics_of(stats) -> None:
    for kind, params in METRICS:
        from_stats(kind, stats, **params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, c, s = args.images, args.channels, args.size
    src = maps(n, c, s, None, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, f"{name}.zarr") for name in ("source", "rep0", "rep1")}
        write(paths["source"], src, 0)
        write(paths["rep0"], maps(n, c, s, src, 0.3, 1), 1)
        write(paths["rep1"], maps(n, c, s, src, 0.3, 2), 1)
        side = source_stats_from_store(paths["source"])
        store = open_store(paths["source"])
        assert store.n == n

        def source():
            metrics_of(pair_stats_from_stores(paths["source"], paths["rep0"], side)[LAYER])

        def pair():
            metrics_of(replicate_pair_stats(paths["rep0"], paths["rep1"])[LAYER])

        def null():
            metrics_of(null_stats_from_store(paths["source"], side, 1, 0)[LAYER][0])

        t = {name: best_of(fn, args.repeats) for name, fn in (("source", source), ("pair", pair), ("null", null))}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"1 thread; {n} images x {c} channels x {s}x{s} (n = {n * s * s} observations), float32 zstd-1 stores")
    for name in ("source", "pair", "null"):
        print(f"{name:>6}: {t[name]:.3f} s  ({t[name] / t['source']:.2f} x the distance to the source)")


if __name__ == "__main__":
    main()

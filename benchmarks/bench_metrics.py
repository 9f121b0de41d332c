"""Similarity engine benchmarks: every number is a ratio against a baseline measured in the same run.

    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_metrics.py          # CPU part
    python benchmarks/bench_metrics.py --gpu --json out.json                     # + GPU part (CUDA)

CPU (n = 20,000 observations, C = 512 features, float32 inputs as in the activation stores):
  all four layer metrics (procrustes, pwsm alpha = 0.5, cka, cca) from the raw matrices through
  one pass of the float64 accumulator, against the peer libraries' way: each metric on its own,
  from the centred data, with full SVDs (netrep's LinearMetric for pwsm: whiten with eigh of
  X^T X, rotate with the SVD of Xw^T Yw, take the angle of the aligned data; SVCCA-style thin
  SVDs of X and Y for cca; Ding et al.'s SVD of X*^T Y* for procrustes; Kornblith's
  feature-space formula for cka), written in torch float64 on the same BLAS so that the ratio
  measures the method, not the library. Peak memory: each side runs in a fresh process; after
  the inputs are loaded (np.load, straight into their final arrays), the libraries warmed up on
  small matrices and freed heap pages returned (malloc_trim; glibc's malloc, not tcmalloc, whose
  caches hide or inflate the peak), the kernel's resident-set high-water mark (VmHWM) is reset
  through /proc/self/clear_refs, the metrics run, and the growth of VmHWM over the resident size
  before is the peak extra memory (every allocator included: numpy, torch, MKL).

GPU (when CUDA is available, --gpu):
  - accumulator at n = 200,000, C = 2048: float64 TFLOP/s of X^T X, Y^T Y, X^T Y streamed from
    float32 inputs on the device, as a fraction of a plain float64 matmul's rate on the same GPU;
    the four metrics against the peer way, as on the CPU;
  - filter granularity, 512 pairs of 224 x 224 maps: the scaled Newton-Schulz polar path against
    batched float64 eigvalsh of M^T M, with its maximum absolute error against float64 svdvals;
  - CPU and CUDA agreement of the metrics and of the map distances (to 1e-8).
Importable with torch and numpy alone (the GPU machine has no zarr, pandas or snakemake).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn.filterwise import map_distances  # noqa: E402
from featdyn.linalg import chunked, polar_nuclear_norm  # noqa: E402
from featdyn.metrics import distances  # noqa: E402
from featdyn.stats import Accumulator  # noqa: E402

METRICS = {"procrustes": {"kind": "procrustes"}, "pwsm": {"kind": "pwsm", "alpha": 0.5},
           "cka": {"kind": "cka"}, "cca": {"kind": "cca"}}


# -- data -----------------------------------------------------------------------------------------

def activations(n: int, c: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU-like float32 activations of a source model and a perturbed copy (correlated channels)."""
    g = torch.Generator(device=device).manual_seed(seed)
    mix = torch.randn(c, c, generator=g, device=device) / math.sqrt(c)
    x = torch.relu(torch.randn(n, c, generator=g, device=device) @ mix + 0.3)
    y = torch.relu(x @ (torch.eye(c, device=device) + 0.3 * torch.randn(c, c, generator=g, device=device) / math.sqrt(c))
                   + 0.2 * torch.randn(n, c, generator=g, device=device))
    return x.contiguous(), y.contiguous()


# -- the peer libraries' way: each metric on its own, from the data, with full SVDs --------------

def _centre(a: torch.Tensor) -> torch.Tensor:
    a = a.to(torch.float64)
    return a - a.mean(0, keepdim=True)


def peer_procrustes(x, y) -> float:
    xc, yc = _centre(x), _centre(y)
    xc, yc = xc / torch.linalg.norm(xc), yc / torch.linalg.norm(yc)
    _, s, _ = torch.linalg.svd(xc.T @ yc)
    return 1.0 - float(s.sum())


def peer_cka(x, y) -> float:
    xc, yc = _centre(x), _centre(y)
    return 1.0 - float(torch.linalg.norm(yc.T @ xc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc)))


def peer_cca(x, y) -> float:
    ux = torch.linalg.svd(_centre(x), full_matrices=False)[0]
    uy = torch.linalg.svd(_centre(y), full_matrices=False)[0]
    rho = torch.linalg.svd(ux.T @ uy)[1]
    return math.acos(min(1.0, float(rho.mean())))


def _netrep_whiten(xc: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    lam, v = torch.linalg.eigh(xc.T @ xc)
    lam = lam.clamp_min(1e-7)
    d = alpha + (1 - alpha) * lam.rsqrt()
    z = (v * d) @ v.T
    return xc @ z, z


def peer_pwsm(x, y, alpha: float = 0.5) -> float:
    """netrep's LinearMetric on inputs scaled to unit mean eigenvalue (our scale-free definition)."""
    xc, yc = _centre(x), _centre(y)
    xc, yc = xc * math.sqrt(xc.shape[1]) / torch.linalg.norm(xc), yc * math.sqrt(yc.shape[1]) / torch.linalg.norm(yc)
    xw, zx = _netrep_whiten(xc, alpha)
    yw, zy = _netrep_whiten(yc, alpha)
    u, _, vt = torch.linalg.svd(xw.T @ yw)
    tx, ty = xc @ (zx @ u), yc @ (zy @ vt.T)
    return math.acos(min(1.0, float((tx * ty).sum() / (torch.linalg.norm(tx) * torch.linalg.norm(ty)))))


PEERS = {"procrustes": peer_procrustes, "pwsm": peer_pwsm, "cka": peer_cka, "cca": peer_cca}


def ours_all(x, y, device) -> dict[str, float]:
    return distances(x, y, METRICS, device=device)


def peers_all(x, y) -> dict[str, float]:
    return {name: fn(x, y) for name, fn in PEERS.items()}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device="cpu"):
    best, out = math.inf, None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


# -- peak memory in a fresh process ---------------------------------------------------------------

def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def _memory_child(which: str, paths: tuple[str, str], threads: int, queue) -> None:
    import ctypes

    torch.set_num_threads(threads)
    # The inputs are read straight into their final arrays: no freed temporaries stay resident.
    x, y = (torch.from_numpy(np.load(p)) for p in paths)
    run = ours_all if which == "ours" else (lambda a, b, _device: peers_all(a, b))
    xs, ys = activations(64, 8, seed=1)  # warm up the libraries (thread pools, MKL buffers)
    run(xs, ys, "cpu")
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back: RSS = live memory
    except (OSError, AttributeError):
        pass
    before = _status_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    run(x, y, "cpu")
    queue.put((_status_kb("VmHWM:") - before) * 1024)


def peak_extra_bytes(which: str, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Peak extra resident memory of computing the four metrics, in a fresh process that uses
    glibc's malloc (tcmalloc keeps freed pages resident, which would hide or inflate the peak)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = (os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy"))
        np.save(paths[0], x.numpy())
        np.save(paths[1], y.numpy())
        preload = os.environ.pop("LD_PRELOAD", None)
        try:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_memory_child, args=(which, paths, torch.get_num_threads(), queue))
            proc.start()
            out = queue.get(timeout=900)
            proc.join()
            return out
        except (OSError, PermissionError) as exc:  # /proc/self/clear_refs not writable
            print(f"  (peak memory not measured: {exc})")
            return None
        finally:
            if preload is not None:
                os.environ["LD_PRELOAD"] = preload


# -- parts ----------------------------------------------------------------------------------------

def cpu_part(n: int, c: int, repeats: int) -> dict:
    print(f"CPU: four layer metrics, n = {n}, C = {c}, float32 inputs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    x, y = activations(n, c)
    t_ours, ours = best_time(lambda: ours_all(x, y, "cpu"), repeats)
    t_peer, peer = best_time(lambda: peers_all(x, y), repeats)
    diff = max(abs(ours[k] - peer[k]) for k in METRICS)
    print(f"  ours  (one float64 pass + C x C decompositions): {t_ours:7.3f} s")
    print(f"  peers (each metric from the data, full SVDs)   : {t_peer:7.3f} s")
    print(f"  speed-up: {t_peer / t_ours:5.1f}x   (target >= 5x); max |ours - peers| = {diff:.2e}")
    for k in METRICS:
        print(f"    {k:10s} ours {ours[k]:.12f}  peers {peer[k]:.12f}")
    inputs = x.numel() * x.element_size() + y.numel() * y.element_size()
    mem_ours, mem_peer = peak_extra_bytes("ours", x, y), peak_extra_bytes("peers", x, y)
    res = {"n": n, "C": c, "ours_s": t_ours, "peers_s": t_peer, "speedup": t_peer / t_ours, "max_abs_diff": diff,
           "inputs_bytes": inputs, "ours_peak_extra_bytes": mem_ours, "peers_peak_extra_bytes": mem_peer}
    if mem_ours is not None:
        print(f"  peak extra memory: ours {mem_ours / 2**20:.0f} MiB = {mem_ours / inputs:.2f} x the two inputs "
              f"({inputs / 2**20:.0f} MiB; target < 2x); peers {mem_peer / 2**20:.0f} MiB = {mem_peer / inputs:.2f} x")
    # the accumulator's own rate against a plain float64 matmul of the same shape
    acc_s, _ = best_time(lambda: _accumulate(x, y, "cpu"), repeats)
    a64 = x.to(torch.float64)
    mm_s, _ = best_time(lambda: a64.T @ a64, repeats)
    frac = (3 * mm_s) / acc_s
    print(f"  accumulator: {3 * 2 * n * c * c / acc_s / 1e9:.1f} GFLOP/s = {frac:.2f} of a float64 matmul's rate "
          f"({2 * n * c * c / mm_s / 1e9:.1f} GFLOP/s)")
    res |= {"accumulator_s": acc_s, "matmul_fraction": frac}
    return res


def _accumulate(x, y, device):
    acc = Accumulator(device)
    acc.update(x, y)
    return acc.pair()


def filter_part(device: str, pairs: int, size: int, repeats: int) -> dict:
    """Polar fast path against batched float64 eigvalsh (and exact svdvals for the error)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.relu(torch.randn(pairs, size, size, generator=g, device=device, dtype=torch.float64))
    b = torch.relu(a + 0.6 * torch.randn(pairs, size, size, generator=g, device=device, dtype=torch.float64))
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    a = a / torch.linalg.matrix_norm(a)[:, None, None]
    b = b / torch.linalg.matrix_norm(b)[:, None, None]
    m = a.mT @ b

    def eig_baseline():
        lam = torch.linalg.eigvalsh(m.mT @ m)  # one batched call, as measured in docs/design.md
        return lam.clamp_min(0).sqrt().sum(-1)

    t_eig, v_eig = best_time(eig_baseline, repeats, device)
    t_polar, v_polar = best_time(lambda: polar_nuclear_norm(m), repeats, device)
    # exact values from svdvals (timed on CPUs, where it is the path in use; once on GPUs)
    t_svd, exact = best_time(lambda: chunked(lambda c: torch.linalg.svdvals(c).sum(-1), m),
                             repeats if device == "cpu" else 1, device)
    err_polar = float((v_polar - exact).abs().max())
    err_eig = float((v_eig - exact).abs().max())
    print(f"filter granularity on {device}: {pairs} pairs of {size} x {size} maps (float64)")
    print(f"  batched eigvalsh of M^T M (baseline): {t_eig:7.3f} s  (max abs error {err_eig:.1e})")
    print(f"  batched svdvals (the CPU path)      : {t_svd:7.3f} s  (reference values)")
    print(f"  polar, scaled Newton-Schulz (GPU)   : {t_polar:7.3f} s  (max abs error {err_polar:.1e}; target <= 1e-6)")
    print(f"  speed-up polar vs eigvalsh: {t_eig / t_polar:5.2f}x  (GPU target >= 10x; on a CPU the matmuls "
          f"cost more than LAPACK's eigensolver)")
    return {"device": device, "pairs": pairs, "size": size, "eigvalsh_s": t_eig, "svdvals_s": t_svd,
            "polar_s": t_polar, "speedup": t_eig / t_polar, "polar_max_abs_error": err_polar,
            "eigvalsh_max_abs_error": err_eig}


def gpu_part(n: int, c: int, repeats: int, dev: str = "cuda", filter_pairs: int = 512) -> dict:
    """The GPU figures (``dev`` = 'cpu' and small sizes run the same code as a smoke test)."""
    cuda = dev == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test of the GPU part)"
    print(f"GPU part on {name}, torch {torch.__version__}")
    out = {"device": name}
    # plain float64 matmul rate, the accumulator's block shape
    rows = max(1, (1 << 25) // c) if cuda else min(n, 4096)
    blk = torch.randn(rows, c, device=dev, dtype=torch.float64)
    mm_s, _ = best_time(lambda: blk.T @ blk, repeats, dev)
    mm_rate = 2 * rows * c * c / mm_s
    x, y = activations(n, c, device=dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    acc_s, _ = best_time(lambda: _accumulate(x, y, dev), repeats, dev)
    acc_rate = 3 * 2 * n * c * c / acc_s
    print(f"  float64 matmul ({rows} x {c})^T: {mm_rate / 1e12:.3f} TFLOP/s")
    print(f"  accumulator n = {n}, C = {c}: {acc_s:.3f} s, {acc_rate / 1e12:.3f} TFLOP/s = "
          f"{acc_rate / mm_rate:.2f} of the matmul rate")
    t_ours, ours = best_time(lambda: ours_all(x, y, dev), repeats, dev)
    out |= {"n": n, "C": c, "matmul_tflops": mm_rate / 1e12, "accumulator_s": acc_s,
            "accumulator_tflops": acc_rate / 1e12, "matmul_fraction": acc_rate / mm_rate, "ours_all_s": t_ours,
            "peak_gpu_bytes_ours": torch.cuda.max_memory_allocated() if cuda else None}
    try:
        t_peer, peer = best_time(lambda: peers_all(x, y), 1, dev)
        diff = max(abs(ours[k] - peer[k]) for k in METRICS)
        print(f"  four metrics: ours {t_ours:.3f} s, peers {t_peer:.3f} s, speed-up {t_peer / t_ours:.1f}x, "
              f"max |diff| {diff:.1e}")
        out |= {"peers_all_s": t_peer, "speedup": t_peer / t_ours, "max_abs_diff": diff}
    except torch.OutOfMemoryError as exc:
        print(f"  peers ran out of GPU memory ({exc.__class__.__name__})")
    del x, y, blk
    if cuda:
        torch.cuda.empty_cache()
    # CPU and the device agree
    xs, ys = activations(4000, 96)
    on_cpu, on_dev = ours_all(xs, ys, "cpu"), ours_all(xs, ys, dev)
    agree = max(abs(on_cpu[k] - on_dev[k]) for k in METRICS)
    maps_x = torch.relu(torch.randn(64, 16, 28, 28))
    maps_y = torch.relu(maps_x + 0.5 * torch.randn_like(maps_x))
    maps_x[0, 0] = 0
    fagree = 0.0
    for kind in ("procrustes", "cka"):
        vc, okc = map_distances(kind, maps_x, maps_y, method="svd", device="cpu")
        vg, okg = map_distances(kind, maps_x, maps_y, method="polar" if cuda else "auto", device=dev)
        assert torch.equal(okc, okg)
        fagree = max(fagree, float((vc - vg).abs().max()))
    print(f"  CPU vs {dev}: metrics {agree:.1e}, filter maps {fagree:.1e} (target <= 1e-8)")
    out |= {"cpu_device_max_diff_metrics": agree, "cpu_device_max_diff_filters": fagree}
    out["filter"] = filter_part(dev, filter_pairs, 224, repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--c", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also the GPU part (skipped cleanly without CUDA)")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    ap.add_argument("--smoke", action="store_true", help="run the GPU part's code on the CPU at small sizes")
    ap.add_argument("--filter-pairs", type=int, default=32, help="CPU filter benchmark: pairs of 224 x 224 maps")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {}
    if args.smoke:
        results["smoke"] = gpu_part(3000, 64, 1, dev="cpu", filter_pairs=4)
    elif not args.gpu_only:
        results["cpu"] = cpu_part(args.n, args.c, args.repeats)
        results["filter_cpu"] = filter_part("cpu", args.filter_pairs, 224, args.repeats)
    if args.gpu or args.gpu_only:
        if torch.cuda.is_available():
            results["gpu"] = gpu_part(200_000, 2048, args.repeats + 1)
        else:
            print("GPU part skipped: CUDA is not available")
            results["gpu"] = None
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

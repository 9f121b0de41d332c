"""Activation capture to Zarr: extraction speed against the forward pass, and bytes stored.

One command (CPU):
    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_extract.py
GPU (what benchmarks/gpu_extract.sh runs):
    python benchmarks/bench_extract.py --device cuda --models resnet50 vgg19 densenet121 --sizes 224 ...

Part 1, speed: images/s of `extract()` (hooks, host copies, writer thread, Zarr store on disk)
against the same forward pass with the same hooks and no storage (`capture_batches`, drained),
and a plain forward pass without hooks, measured alternately in the same run (median of
``--repeats``). The ratio extract / hooks-only is the figure of merit (target >= 0.8).
Part 2, bytes: bytes per image stored per model preset at 224 px, zstd-1 against none.

Real ImageNet weights exist offline only for mobilenet_v2 (TORCH_HOME seeded by
tools/seed_torch_cache.py); the other models are randomly initialised (their byte counts and
compression ratios are those of random-init activations: about half zeros after every ReLU).
Images are crops of scikit-image's texture photos (brick, grass, gravel) when scikit-image is
installed, else smooth random images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn import FeatdynError  # noqa: E402
from featdyn.data.datasets import ImageCache, SplitSpec, prepare  # noqa: E402
from featdyn.engine.linalg import pick_device  # noqa: E402
from featdyn.nets.checkpoints import save_checkpoint  # noqa: E402
from featdyn.nets.extraction import capture_batches, extract, float32_precision, load_model  # noqa: E402
from featdyn.nets.models import build_model, cached_weights_path, load_pretrained_state, resolve_weights  # noqa: E402
from featdyn.spec.layer_presets import preset  # noqa: E402


def texture_tree(root: Path, n_per_class: int, size: int, seed: int = 0) -> Path:
    """Three classes of image crops: real texture photos if scikit-image is there."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    try:
        from skimage import data

        photos = [data.brick(), data.grass(), data.gravel()]
    except ImportError:
        photos = [np.kron(rng.integers(0, 256, (32, 32)), np.ones((16, 16))).astype(np.uint8) for _ in range(3)]
    for c, photo in enumerate(photos):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            side = int(rng.integers(128, 384))
            y, x = rng.integers(0, photo.shape[0] - side, 2)
            crop = Image.fromarray(photo[y:y + side, x:x + side]).convert("RGB").resize((size, size))
            crop.save(d / f"img_{i:04d}.png")
    return root


def make_inputs(work: Path, arch: str, n_probe: int, size: int) -> tuple[Path, ImageCache, str]:
    """A prepared dataset with ``n_probe`` probe images and a checkpoint of ``arch``."""
    per_class = -(-n_probe // 3)
    data_dir = work / f"data_{size}_{per_class}"
    if not (data_dir / "manifest.csv").exists():
        tree = texture_tree(work / f"tree_{size}_{per_class}", 2 * per_class, size)
        prepare(tree, data_dir, size, SplitSpec(test_fraction=0.5, probe_per_class=per_class), threads=2)
    cache = ImageCache(data_dir)
    ckpt, note = work / f"{arch}.pt", work / f"{arch}.weights"
    if not ckpt.exists():
        torch.manual_seed(0)
        weights = "random init"
        model = build_model(arch, cache.num_classes)
        # ImageNet weights only when they are already in the torch cache: never download.
        if cached_weights_path(resolve_weights(arch, "IMAGENET1K_V1")).is_file():
            state = load_pretrained_state(arch, "IMAGENET1K_V1")
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape},
                                  strict=False)  # all but the new head
            weights = "IMAGENET1K_V1"
        save_checkpoint(ckpt, model, None, {"arch": arch, "num_classes": cache.num_classes, "epoch": 0,
                                            "classes": cache.classes})
        note.write_text(weights)
    return ckpt, cache, note.read_text()


def hooks_only(model, norm, cache, rows, layers, batch, device) -> float:
    """Images/s of the forward pass with the extraction hooks (host float32 copies), no storage."""
    t0 = time.perf_counter()
    for b in capture_batches(model, norm, cache, rows, layers, batch, device):
        b.numpy()  # waits for the device-to-host copies
    return len(rows) / (time.perf_counter() - t0)


def forward_only(model, norm, cache, rows, batch, device) -> float:
    """Images/s of the plain forward pass (no hooks, no copies)."""
    from featdyn.nets.batches import iterate_batches

    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in iterate_batches(cache, rows, batch, device):
            model(norm(x))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(rows) / (time.perf_counter() - t0)


def check_device(work: Path, arch: str, size: int, device: torch.device) -> dict:
    """Largest difference between the capture on ``device`` and on the CPU (same checkpoint, same two
    images, IEEE float32 on both), relative to the largest activation of each layer."""
    ckpt, cache, weights = make_inputs(work, arch, 2, size)
    rows, layers = cache.indices("probe")[:2], preset(arch)
    got = {}
    for dev in (torch.device("cpu"), device):
        model, norm, _ = load_model(ckpt, cache, dev)
        with float32_precision(dev, tf32=False):
            got[dev.type] = next(capture_batches(model, norm, cache, rows, layers, 2, dev)).numpy()
    return {layer: float(np.abs(got[device.type][layer] - got["cpu"][layer]).max() / np.abs(got["cpu"][layer]).max())
            for layer in layers}


def store_only(feats: dict[str, np.ndarray], n: int, batch: int, layers: list[str], out: Path, codec: str) -> float:
    """Images/s of storage alone: one captured batch written n/batch times (no compute)."""
    from featdyn.data.stores import StoreWriter

    batch = len(next(iter(feats.values())))  # fewer than asked when n < batch
    steps = max(1, n // batch)
    t0 = time.perf_counter()
    with StoreWriter(out, steps * batch, layers, {}, chunk=batch, codec=codec, level=1) as w:
        for i in range(steps):
            w.write(i * batch, feats, np.zeros(batch, dtype=np.int64), np.arange(i * batch, (i + 1) * batch))
    return steps * batch / (time.perf_counter() - t0)


def store_bytes(path: Path, layers: list[str]) -> int:
    """Bytes of the layer arrays' chunk files on disk."""
    from featdyn.data.stores import array_name

    return sum(f.stat().st_size for layer in layers for f in (path / array_name(layer) / "c").rglob("*") if f.is_file())


def speed(work: Path, arch: str, size: int, n: int, batch: int, repeats: int, device: torch.device,
          store_dir: Path, codecs: list[str], tf32: bool) -> dict:
    ckpt, cache, weights = make_inputs(work, arch, n, size)
    rows = cache.indices("probe")
    layers = preset(arch)
    model, norm, _ = load_model(ckpt, cache, device)
    runs: dict[str, list[float]] = {"forward": [], "hooks": [], **{f"extract_{c}": [] for c in codecs},
                                    **{f"store_{c}": [] for c in codecs}}
    with float32_precision(device, tf32):
        hooks_only(model, norm, cache, rows[:batch], layers, batch, device)  # warm-up (cudnn, allocator)
        first = next(capture_batches(model, norm, cache, rows[:batch], layers, batch, device)).numpy()
        for _ in range(repeats):
            for codec in codecs:
                out = store_dir / f"{arch}_{size}_{codec}_alone.zarr"
                runs[f"store_{codec}"].append(store_only(first, len(rows), batch, layers, out, codec))
            runs["forward"].append(forward_only(model, norm, cache, rows, batch, device))
            runs["hooks"].append(hooks_only(model, norm, cache, rows, layers, batch, device))
            for codec in codecs:
                out = store_dir / f"{arch}_{size}_{codec}.zarr"
                r = extract(ckpt, cache, layers, out, batch_size=batch, codec=codec, level=1, device=device, tf32=tf32)
                runs[f"extract_{codec}"].append(r["images_per_s"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    res = {"arch": arch, "weights": weights, "size": size, "n": len(rows), "batch": batch, "device": str(device),
           "tf32": tf32, "img_per_s": med, "runs": runs}
    for codec in codecs:
        res[f"ratio_{codec}"] = med[f"extract_{codec}"] / med["hooks"]
        # Each repeat measures both back to back: the median of these paired ratios is less
        # sensitive to other processes on the machine than the ratio of medians.
        res[f"paired_{codec}"] = statistics.median(e / h for e, h in zip(runs[f"extract_{codec}"], runs["hooks"]))
    return res


def bytes_per_image(work: Path, arch: str, size: int, n: int, device: torch.device, store_dir: Path) -> dict:
    ckpt, cache, weights = make_inputs(work, arch, n, size)
    layers = preset(arch)
    sizes = {}
    for codec in ("none", "zstd"):
        out = store_dir / f"bytes_{arch}_{codec}.zarr"
        extract(ckpt, cache, layers, out, batch_size=n, codec=codec, level=1, device=device)
        sizes[codec] = store_bytes(out, layers) / len(cache.indices("probe"))
    return {"arch": arch, "weights": weights, "size": size, "bytes_per_image_none": sizes["none"],
            "bytes_per_image_zstd1": sizes["zstd"], "zstd1_ratio": sizes["none"] / sizes["zstd"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v2"], help="models of the speed part")
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    ap.add_argument("--n", nargs="+", type=int, default=[1024, 96], help="probe images per size")
    ap.add_argument("--batch", type=int, default=32, help="extraction batch (the demo's extraction.batch_size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codecs", nargs="+", default=["zstd", "none"])
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: IEEE float32)")
    ap.add_argument("--bytes-models", nargs="*", default=["mobilenet_v2", "resnet50", "vgg19", "densenet121"])
    ap.add_argument("--bytes-n", type=int, default=6, help="images per model in the bytes part")
    ap.add_argument("--store-dir", default=None, help="where stores are written (default: a temporary folder "
                                                       "under .tmp/ of the repository, i.e. the results disk)")
    ap.add_argument("--check", action="store_true", help="first compare the device's capture with the CPU's")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    if len(args.n) != len(args.sizes):
        ap.error("--n needs one value per --sizes value")
    device = pick_device(args.device)
    try:
        import zarr  # noqa: F401
    except ImportError:
        print("zarr is not installed: storage parts skipped (forward and hook figures only)")
        args.codecs, args.bytes_models = [], []
    repo = Path(__file__).resolve().parents[1]
    base = Path(args.store_dir) if args.store_dir else repo / ".tmp"
    base.mkdir(parents=True, exist_ok=True)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{os.cpu_count()} CPUs'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, stores under {base}, "
          f"load average {os.getloadavg()[0]:.2f}")
    results: dict = {"speed": [], "bytes": [], "check": {}}
    with tempfile.TemporaryDirectory(dir=base, prefix="bench_extract_") as tmp:
        work = Path(tmp)
        if args.check and device.type != "cpu":
            print(f"\n## {device.type} capture against CPU capture: max |difference| / max |activation| per layer")
            for arch in args.models:
                results["check"][arch] = check_device(work, arch, max(args.sizes), device)
                print(f"{arch}: " + ", ".join(f"{k} {v:.1e}" for k, v in results["check"][arch].items()), flush=True)
        print(f"\n## speed: images/s (median of {args.repeats}), ratio = extract / forward with the same hooks")
        print("| model | weights | px | n | batch | forward (no hooks) | forward + hooks | "
              + " | ".join(f"extract {c}" for c in args.codecs) + " | " + " | ".join(f"ratio {c} (paired)" for c in args.codecs)
              + " | " + " | ".join(f"storage alone {c}" for c in args.codecs) + " |")
        for arch in args.models:
            for size, n in zip(args.sizes, args.n):
                r = speed(work, arch, size, n, args.batch, args.repeats, device, work, args.codecs, args.tf32)
                results["speed"].append(r)
                m = r["img_per_s"]
                print(f"| {arch} | {r['weights']} | {size} | {r['n']} | {r['batch']} | {m['forward']:.1f} | {m['hooks']:.1f} | "
                      + " | ".join(f"{m[f'extract_{c}']:.1f}" for c in args.codecs) + " | "
                      + " | ".join(f"{r[f'ratio_{c}']:.2f} ({r[f'paired_{c}']:.2f})" for c in args.codecs) + " | "
                      + " | ".join(f"{m[f'store_{c}']:.1f}" for c in args.codecs) + " |", flush=True)
        if args.bytes_models:
            print("\n## bytes per image stored at 224 px (float32), zstd-1 against none")
            print("| model | weights | bytes/image none | bytes/image zstd-1 | compression ratio |")
            for arch in args.bytes_models:
                try:
                    r = bytes_per_image(work, arch, 224, args.bytes_n, device, work)
                except FeatdynError as exc:
                    print(f"| {arch} | failed: {exc} |")
                    continue
                results["bytes"].append(r)
                print(f"| {arch} | {r['weights']} | {r['bytes_per_image_none'] / 1e6:.2f} MB | "
                      f"{r['bytes_per_image_zstd1'] / 1e6:.2f} MB | {r['zstd1_ratio']:.2f} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

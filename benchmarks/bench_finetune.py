"""Fine-tuning speed: a real epoch through the data path vs. the same model's steps on device tensors.

For each model and image size:

- real: ``featdyn.nets.training.train_one_epoch`` over a uint8 cache memory-mapped from disk (the file
  format ``prepare_dataset`` writes), with background gathering, pinned memory and the side-stream
  copy on CUDA, normalisation on the device, bf16 autocast + channels-last on CUDA;
- baseline: the same model, optimizer and precision settings stepping on one random, already
  normalised batch that lives on the device (no data path at all);
- ratio = real / baseline images per second (1.0: the data path costs nothing);
- setup: one epoch job's overhead before its first step, measured in a fresh process (start and
  imports, load + build the checkpoint's model and optimizer, open the cache and get the first batch
  on the device), and the checkpoint save at its end.

Needs torch, torchvision and numpy only (no pandas, zarr or snakemake), so that it runs on a bare
GPU machine. Weights are randomly initialised (speed does not depend on them; nothing downloads).

    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_finetune.py                 # CPU: the demo model
    python benchmarks/bench_finetune.py --device cuda --models vgg19 resnet50 densenet121 \\
        --sizes 224 --batch 196 --out "$OUT"                                               # GPU: the paper's
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from featdyn.engine.linalg import pick_device
from featdyn.nets.batches import Normalizer, iterate_batches, loader_workers
from featdyn.nets.checkpoints import save_checkpoint
from featdyn.nets.models import build_model  # noqa: E402
from featdyn.nets.training import _flag, _logits, _place, configure_backends, make_optimizer, resume, train_one_epoch
from featdyn.spec.hyperparams import TrainConfig


class ArrayCache:
    """The attributes of ``featdyn.data.datasets.ImageCache`` that training reads, over a ``.npy`` file
    memory-mapped like the real cache (ImageCache itself also reads the CSV manifest with pandas)."""

    def __init__(self, folder: Path, n_train: int, n_test: int, size: int, classes: int, seed: int = 0) -> None:
        path = folder / "cache.npy"
        rng = np.random.default_rng(seed)
        if not path.exists():
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_train + n_test, size, size, 3))
            for start in range(0, len(arr), 256):
                arr[start:start + 256] = rng.integers(0, 256, size=arr[start:start + 256].shape, dtype=np.uint8)
            arr.flush()
            del arr
        self.images = np.load(path, mmap_mode="r")
        self.labels = rng.integers(0, classes, len(self.images)).astype(np.int64)
        self.labels[:classes] = np.arange(classes)
        self.num_classes = classes
        self.classes = [f"c{i}" for i in range(classes)]
        self.split = np.array(["train"] * n_train + ["test"] * n_test)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_steps(model: nn.Module, optimizer, cfg: TrainConfig, device: torch.device, size: int,
                    classes: int, steps: int) -> float:
    """Images/s of training steps on one random batch already on the device (the ceiling)."""
    model.train()
    x = torch.randn(cfg.batch_size, 3, size, size, device=device)
    if _flag(cfg.channels_last, device):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (cfg.batch_size,), device=device)
    use_bf16 = _flag(cfg.bf16, device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = nn.functional.cross_entropy(_logits(model(x)).float(), y)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def real_epoch(model, norm, optimizer, cache, cfg, device, workers, epoch) -> float:
    t0 = time.perf_counter()
    train_one_epoch(model, norm, optimizer, cache, cfg, epoch, device, workers)
    sync(device)
    return len(cache.indices("train")) / (time.perf_counter() - t0)


def setup_child(args) -> None:
    """One epoch job's start, in this fresh process: print stage times since the parent's launch."""
    stamps = {"launch": args.launched}
    cfg = TrainConfig(**json.loads(args.cfg))
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    configure_backends(device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context, part of every GPU job's start
    stamps["imports"] = time.time()
    meta = json.loads(args.cache_meta)
    cache = ArrayCache(Path(args.folder), **meta)
    model, optimizer = resume(args.checkpoint, 1, args.arch, cache.num_classes, cfg, device)
    sync(device)
    stamps["checkpoint"] = time.time()
    rows = cache.indices("train")
    batches = iterate_batches(cache, rows, cfg.batch_size, device, workers=loader_workers(args.threads, device))
    x, _ = next(batches)
    x.sum().item()
    stamps["first_batch"] = time.time()
    batches.close()
    print(json.dumps(stamps))


def measure_setup(arch: str, model: nn.Module, optimizer, cache_meta: dict, folder: Path, cfg: TrainConfig,
                  device: torch.device, threads: int) -> dict[str, float]:
    """Save the trained model with its Adam moments as an epoch's checkpoint (timed), then time a
    fresh process that resumes from it up to its first batch on the device."""
    ckpt = folder / f"{arch}_epoch.pt"
    t0 = time.perf_counter()
    save_checkpoint(ckpt, model, optimizer, {"arch": arch, "width": 1.0, "num_classes": cache_meta["classes"],
                                             "epoch": 0, "seed": cfg.seed,
                                             "classes": [f"c{i}" for i in range(cache_meta["classes"])]})
    save_s = time.perf_counter() - t0
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    launched = time.time()
    out = subprocess.run([sys.executable, __file__, "--setup-child", "--arch", arch, "--checkpoint", str(ckpt),
                          "--folder", str(folder), "--cache-meta", json.dumps(cache_meta),
                          "--cfg", json.dumps(_cfg_dict(cfg)), "--device", str(device),
                          "--threads", str(threads), "--launched", str(launched)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"setup measurement failed:\n{out.stderr[-3000:]}")
    s = json.loads(out.stdout.strip().splitlines()[-1])
    return {"start_imports_s": s["imports"] - s["launch"], "load_checkpoint_s": s["checkpoint"] - s["imports"],
            "first_batch_s": s["first_batch"] - s["checkpoint"], "setup_total_s": s["first_batch"] - s["launch"],
            "save_checkpoint_s": save_s, "checkpoint_mb": ckpt.stat().st_size / 1e6}


def _cfg_dict(cfg: TrainConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items() if k != "extra"}


def bench(arch: str, size: int, steps: int, args, device: torch.device, folder: Path) -> dict:
    threads = torch.get_num_threads()
    workers = loader_workers(threads, device)
    n_train = args.batch * steps
    meta = {"n_train": n_train, "n_test": args.batch, "size": size, "classes": args.classes}
    cache = ArrayCache(folder, **meta)
    amp = "auto" if not args.fp32 else False
    cfg = TrainConfig(batch_size=args.batch, eval_batch_size=args.batch, lr=1e-4, bf16=amp, channels_last=amp)
    torch.manual_seed(0)
    model = _place(build_model(arch, args.classes), device, cfg)
    optimizer = make_optimizer(model, cfg, device)
    norm = Normalizer(cfg.mean, cfg.std, _flag(cfg.channels_last, device)).to(device)
    # Warm-up: cuDNN autotuning / oneDNN kernel creation, and the page cache of the memory map.
    synthetic_steps(model, optimizer, cfg, device, size, args.classes, 2)
    real_epoch(model, norm, optimizer, cache, cfg, device, workers, 0)
    real, base = [], []
    for r in range(args.repeats):  # interleaved, so that other load on the machine hits both alike
        base.append(synthetic_steps(model, optimizer, cfg, device, size, args.classes, steps))
        real.append(real_epoch(model, norm, optimizer, cache, cfg, device, workers, r + 1))
    result = {"model": arch, "size": size, "batch": args.batch, "device": str(device),
              "precision": "bf16+channels_last" if _flag(amp, device) else "fp32", "threads": threads,
              "gather_threads": workers, "real_img_s": statistics.median(real),
              "baseline_img_s": statistics.median(base)}
    result["ratio"] = result["real_img_s"] / result["baseline_img_s"]
    if not args.no_setup:
        result |= measure_setup(arch, model, optimizer, meta, folder, cfg, device, threads)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    (folder / "cache.npy").unlink()
    for f in folder.glob(f"{arch}_*.pt"):
        f.unlink()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", default=["mobilenet_v2"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=0, help="training steps per measured epoch (0: by device and size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels-last on CUDA")
    p.add_argument("--no-setup", action="store_true", help="skip the setup-overhead measurement")
    p.add_argument("--out", default=None, help="folder for results.json (and the temporary cache)")
    # internal: the fresh process of the setup measurement
    p.add_argument("--setup-child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--arch", "--checkpoint", "--folder", "--cache-meta", "--cfg", "--launched"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.setup_child:
        args.launched = float(args.launched)
        args.threads = int(args.threads)
        return setup_child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    configure_backends(device)
    out = Path(args.out) if args.out else None
    results = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for arch in args.models:
            for size in args.sizes:
                # default: a few seconds per measurement (30 GPU steps; on a CPU, fewer at larger sizes)
                steps = args.steps or (30 if device.type == "cuda" else max(4, int(20 * (64 / size) ** 2)))
                r = bench(arch, size, steps, args, device, Path(tmp))
                results.append(r)
                print(f"{arch:12s} {size:4d}px batch {r['batch']:3d} {r['device']:5s} {r['precision']:18s} "
                      f"real {r['real_img_s']:8.1f} img/s  baseline {r['baseline_img_s']:8.1f} img/s  "
                      f"ratio {r['ratio']:.3f}", flush=True)
                if "setup_total_s" in r:
                    print(f"{'':12s} setup {r['setup_total_s']:.2f} s = start+imports {r['start_imports_s']:.2f} + "
                          f"checkpoint {r['load_checkpoint_s']:.2f} + first batch {r['first_batch_s']:.2f}; "
                          f"save {r['save_checkpoint_s']:.2f} s ({r['checkpoint_mb']:.0f} MB)", flush=True)
    if out:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()

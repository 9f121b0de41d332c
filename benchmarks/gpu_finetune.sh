#!/usr/bin/env bash
# GPU checks and benchmark of the fine-tuning stage, in one go, on a machine with one CUDA GPU.
# Needs python with torch, torchvision and numpy only (no snakemake, zarr or pandas); no network.
#   OUT=/some/folder bash benchmarks/gpu_finetune.sh        (run from the repository root)
# Writes under "$OUT": env.txt, checks.txt (correctness on the GPU), bench.txt + bench/results.json
# (the three paper models at 224 px, batch 196, bf16 + channels-last) and bench_fp32.txt (ResNet50
# in fp32, for reference). About 4-5 minutes on an H100/H200; record the figures in
# benchmarks/README.md, section "Fine-tuning".
set -euo pipefail
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT/bench" "$OUT/bench_fp32"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

{ nvidia-smi || true; "$PY" -c "import torch, torchvision, numpy; print('torch', torch.__version__, 'torchvision',
  torchvision.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; \
  nproc; free -g; } > "$OUT/env.txt" 2>&1

# 1. Correctness on the GPU (device-specific paths the CPU tests cannot reach).
"$PY" - > "$OUT/checks.txt" 2>&1 <<'EOF'
import sys, tempfile, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "benchmarks")
from bench_finetune import ArrayCache
from featdyn.nets.models import fetch_weights
from featdyn.nets.training import TrainConfig, fine_tune, iterate_batches, load_checkpoint, run_epoch

dev = torch.device("cuda")
ok = True
def report(name, good, detail=""):
    global ok
    ok &= bool(good)
    print(f"{'PASS' if good else 'FAIL'} {name} {detail}", flush=True)

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    cache = ArrayCache(tmp, n_train=600, n_test=60, size=64, classes=5)
    # (a) side-stream copies: every batch arrives intact even while the GPU is busy with large matmuls.
    rows = np.random.default_rng(0).permutation(len(cache.labels))
    big = torch.randn(4096, 4096, device=dev)
    got = []
    for x, y in iterate_batches(cache, rows, 32, dev, workers=3, ahead=4):
        for _ in range(3):
            big = (big @ big).clamp_(-1, 1)   # keep the compute stream busy while copies are queued
        got.append((x.cpu(), y.cpu()))
    xs = torch.cat([g[0] for g in got]).numpy(); ys = torch.cat([g[1] for g in got]).numpy()
    report("cuda batches equal the cache rows", np.array_equal(xs, cache.images[rows]) and np.array_equal(ys, cache.labels[rows]))
    # (b) the epoch chain on CUDA (bf16, channels-last, fused Adam) against one loop.
    for arch, width in [("resnet50", 0.25), ("vgg19", 0.125), ("densenet121", 0.25)]:
        cfg = TrainConfig(epochs=2, batch_size=32, eval_batch_size=64, lr=1e-3)
        fetch_weights(arch, None, tmp / "w.pt", width=width)
        prev, rows_ = None, []
        for e in range(3):
            rows_.append(run_epoch(e, arch, cache, cfg, tmp / f"e{e}.pt", weights_file=tmp / "w.pt", previous=prev,
                                   device=dev, width=width, threads=4))
            prev = tmp / f"e{e}.pt"
        model, loop = fine_tune(arch, cache, cfg, tmp / "w.pt", device=dev, width=width, workers=3)
        chained = load_checkpoint(prev)["model"]
        diff = max(float((chained[k].float() - v.detach().cpu().float()).abs().max()) for k, v in model.state_dict().items())
        finite = all(np.isfinite([r["train_loss"], r["test_loss"]]).all() for r in rows_)
        report(f"{arch} x{width}: chain vs loop on CUDA", finite and diff < 1e-2,
               f"max |diff| {diff:.2e} (cuDNN is not bit-deterministic); losses " +
               " ".join(f"{r['train_loss']:.3f}" for r in rows_) + "; test acc " +
               " ".join(f"{r['test_acc']:.1f}" for r in rows_))
print("ALL PASS" if ok else "SOME FAILED")
EOF
cat "$OUT/checks.txt"

# 2. Throughput: real epoch from the memory-mapped uint8 cache vs. steps on device tensors.
"$PY" benchmarks/bench_finetune.py --device cuda --models resnet50 vgg19 densenet121 --sizes 224 --batch 196 \
  --threads 8 --out "$OUT/bench" 2>&1 | tee "$OUT/bench.txt"
"$PY" benchmarks/bench_finetune.py --device cuda --models resnet50 --sizes 224 --batch 196 --threads 8 --fp32 \
  --no-setup --out "$OUT/bench_fp32" 2>&1 | tee "$OUT/bench_fp32.txt"

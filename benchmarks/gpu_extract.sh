#!/usr/bin/env bash
# GPU checks of activation capture (issue 5), in one go, results under "$OUT":
#   1. the CUDA capture equals the CPU capture (IEEE float32, no TF32) for the three paper models;
#   2. images/s of extraction to Zarr against the forward pass with the same hooks and no storage,
#      and the plain forward pass, for ResNet50, VGG19, DenseNet121 (+ MobileNetV2) at 224 px;
#   3. the CUDA store test of tests/test_extraction.py when pytest is there.
#
# Run from the repository root on a CUDA machine:   OUT=/some/dir bash benchmarks/gpu_extract.sh
# Needs: python3 with torch (CUDA) and torchvision, numpy, pandas, pillow (featdyn imports them);
# scikit-image is optional (texture photos; smooth random images otherwise).
# zarr is not needed for parts 1-2's forward figures. When it is missing it is installed from wheels
# in .whl/ (carry that folder with the run); make them on a machine that reaches the package index,
# for the GPU machine's Python version (python3 -V there), e.g.:
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c typing_extensions packaging pyyaml
# Without zarr the storage parts are skipped, and the output says so.
# Stores are written to local disk ($STORES, default /tmp/featdyn-gpu-stores), never under $OUT;
# VGG19 stores ~25 MB per image (float32), so n=256 needs ~13 GB free at the peak.
# Device time: about 5 minutes on an H100 (model construction, 4 models x 2 repeats).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.tmp/gpu_extract}
STORES=${STORES:-/tmp/featdyn-gpu-stores}
PY=${PYTHON:-python3}
N=${N:-256}
mkdir -p "$OUT" "$STORES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_HOME=${TORCH_HOME:-$PWD/.torch}   # never download: only weights already there are used

{
  date; nvidia-smi; "$PY" -V
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
  nproc; df -h "$STORES" | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! "$PY" -c "import zarr" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing zarr from .whl/" | tee -a "$OUT/env.txt"
    "$PY" -m pip install --no-index --find-links .whl zarr numcodecs >>"$OUT/env.txt" 2>&1 \
      || "$PY" -m pip install --user --no-index --find-links .whl zarr numcodecs >>"$OUT/env.txt" 2>&1 \
      || echo "zarr install from .whl failed: storage parts skipped" | tee -a "$OUT/env.txt"
  else
    echo "zarr missing and no .whl/: storage parts skipped" | tee -a "$OUT/env.txt"
  fi
fi

# 1 + 2: device check, then speed (batch 64: a GPU-sized batch; the demo's extraction.batch_size is 32).
timeout 480 "$PY" benchmarks/bench_extract.py --device cuda --check \
    --models resnet50 vgg19 densenet121 mobilenet_v2 --sizes 224 --n "$N" --batch 64 --repeats 2 \
    --bytes-models --store-dir "$STORES" --json "$OUT/bench_extract.json" 2>&1 | tee "$OUT/bench_extract.txt"
echo "bench_extract exit ${PIPESTATUS[0]}" | tee -a "$OUT/bench_extract.txt"

# 3: the CUDA store test (CUDA store = CPU store within 1e-4), when pytest and zarr are there.
if "$PY" -c "import pytest, zarr" 2>/dev/null; then
  timeout 120 "$PY" -m pytest -q tests/test_extraction.py -k cuda 2>&1 | tail -5 | tee "$OUT/pytest_cuda.txt"
fi
rm -rf "$STORES"

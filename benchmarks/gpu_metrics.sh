#!/usr/bin/env bash
# GPU checks of the similarity engine, in one go, for a session with a CUDA machine (torch and
# numpy suffice; zarr, pandas and snakemake are not needed). Results go under "$OUT":
#   bench_metrics_gpu.{txt,json}  accumulator (n = 200,000, C = 2048, float32 inputs): the time
#                                 its products need at the float64 GEMM rate over its time (target
#                                 >= 0.5); four metrics vs the peer way; CPU vs CUDA agreement;
#                                 filter path on 512 pairs of 224 x 224 maps: featdyn's
#                                 map_distances (polar iteration) vs the same pipeline with batched
#                                 float64 eigvalsh (target >= 10x) and its error against LAPACK's
#                                 svdvals (target <= 1e-6)
#   pytest_cuda.txt               the CUDA tests of tests/ (when pytest, hypothesis, scipy and
#                                 pandas are installed there)
# Usage (from the repository root): OUT=/some/dir bash benchmarks/gpu_metrics.sh   (~3 minutes)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_metrics}
PY=${PYTHON:-python}
mkdir -p "$OUT"
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$OUT/env.txt" 2>&1
timeout 420 $PY benchmarks/bench_metrics.py --gpu-only --json "$OUT/bench_metrics_gpu.json" 2>&1 \
  | tee "$OUT/bench_metrics_gpu.txt"
if $PY -c "import pytest, hypothesis, scipy, pandas" 2>/dev/null; then
  PYTHONPATH=src timeout 120 $PY -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_stats.py tests/test_filterwise.py 2>&1 | tee "$OUT/pytest_cuda.txt"
else
  echo "pytest/hypothesis/scipy/pandas missing: CUDA tests not run (bench_metrics checks CPU vs CUDA)" \
    | tee "$OUT/pytest_cuda.txt"
fi

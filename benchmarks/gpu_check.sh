#!/usr/bin/env bash
# All GPU checks and benchmarks in one device call, sized for a ~15-minute device budget:
#   similarity engine (gpu_metrics.sh), fine-tuning (gpu_finetune.sh), activation capture
#   (gpu_extract.sh), layer layouts (bench_layouts.py), each under its own time limit so that one
#   slow part cannot starve the others (limits add up to 710 s).
# The device tool returns at most 8 files from $OUT, two folders deep: every part writes into its
# own scratch folder and everything is packed into $OUT/gpu_check.tar.gz, with a summary beside it.
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (from the repository root; ~12 minutes at most)
# Carry `.whl` (zarr wheels, see gpu_extract.sh's header) for the storage part of the extraction.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
SCRATCH=${SCRATCH:-/tmp/featdyn-gpu-check}
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH" "$OUT"
export PYTHONUNBUFFERED=1
export PYTHON=${PYTHON:-python3}   # the parts default to `python` or `python3`; use one for all
run() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  mkdir -p "$SCRATCH/$name"
  OUT="$SCRATCH/$name" timeout "$limit" "$@" > "$SCRATCH/$name/stdout.txt" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
run metrics 200 bash benchmarks/gpu_metrics.sh
run finetune 270 bash benchmarks/gpu_finetune.sh
N=${N:-128} run extract 180 bash benchmarks/gpu_extract.sh
# every architecture on the right axes: a ViT-B/16 token layer and ConvNeXt-T layers at 224 px,
# featdyn's capture against a plain hooked forward, and a 197-token layer's statistics
run layouts 60 "$PYTHON" benchmarks/bench_layouts.py --device cuda --batch 64 --repeats 5
tar -czf "$OUT/gpu_check.tar.gz" -C "$SCRATCH" .
tail -n 40 "$SCRATCH"/*/stdout.txt >> "$OUT/summary.txt" 2>/dev/null

#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, Python 3.12, PyTorch, CUDA 13, cuda-python, onnx
# and onnxruntime (CPU) but no TensorRT and no network. Prepare with
#   python benchmarks/gpu_prepare.py
# here; .gpu/ then holds the TensorRT-RTX wheels (the libraries wheel in two pieces) and engines
# built on the CPU. The device tool carries at most 64 MiB per call, so the pieces travel in two
# back-to-back calls while the machine stays warm:
#   call 1: carry .gpu/c1 (libs.part-aa, small engines), run: bash benchmarks/gpu_check.sh stash
#   call 2: carry .gpu/c2 (libs.part-ab, small wheels, the rest), run: bash benchmarks/gpu_check.sh
# Results land in $OUT (gpu_check.json, gpu_check.md). Under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
STASH=/root/trt-mpq-gpu
mkdir -p "$STASH"
# keep what this call carried; the machine keeps files between calls while it is warm
for d in .gpu/c1 .gpu/c2; do [ -d "$d" ] && cp -n "$d"/* "$STASH/" 2>/dev/null; done
if [ "${1:-}" = "stash" ]; then
  ls -la "$STASH"; nvidia-smi || true; exit 0
fi
OUT=${OUT:-$PWD/gpu_check_out}; mkdir -p "$OUT"
cd "$STASH"
if [ ! -f libs.part-aa ] || [ ! -f libs.part-ab ]; then
  echo "missing a piece of the TensorRT-RTX libraries wheel" | tee "$OUT/gpu_check.md"; exit 1
fi
cat libs.part-aa libs.part-ab > "$(cat libs.name)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ./*.whl \
  > "$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
cd - > /dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GPU_ENGINES=$STASH OUT
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
timeout 420 python3 benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
# the GPU-marked tests, against this machine's own packages
timeout 150 python3 -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tail -25 \
  | tee "$OUT/pytest_gpu.log"

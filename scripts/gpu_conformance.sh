#!/usr/bin/env bash
# Runs the conformance suite's gpu profile for every backend whose framework sees a GPU, with
# TF32 off in every framework, and writes one JSON report per backend plus a Markdown summary
# (date, GPU model, versions) under docs/conformance-gpu/ (or $OUT_DIR).
#
#   scripts/gpu_conformance.sh            # all backends
#   scripts/gpu_conformance.sh torch jax  # some
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-docs/conformance-gpu}
mkdir -p "$OUT"
export NVIDIA_TF32_OVERRIDE=0  # cuBLAS / cuDNN: no TF32, whatever a framework asks for
export TF_CPP_MIN_LOG_LEVEL=2
export PYTHONHASHSEED=0

# backend -> a Python check that its framework sees a GPU (each in a fresh process).
declare -A PROBE=(
  [torch]="import torch; assert torch.cuda.is_available()"
  [official]="import torch; assert torch.cuda.is_available()"
  [pytorch-optimizer]="import torch; assert torch.cuda.is_available()"
  [jax]="import jax; assert jax.devices('gpu')"
  [keras-tensorflow]="import tensorflow as tf; assert tf.config.list_physical_devices('GPU')"
  [keras-jax]="import jax; assert jax.devices('gpu')"
  [keras-torch]="import torch; assert torch.cuda.is_available()"
)
ORDER=(torch official pytorch-optimizer jax keras-tensorflow keras-jax keras-torch)
BACKENDS=("${@:-${ORDER[@]}}")

status=0
ran=()
for b in "${BACKENDS[@]}"; do
  if ! "$PY" -c "${PROBE[$b]}" >/dev/null 2>&1; then
    echo "== $b: its framework sees no GPU here, not run"
    continue
  fi
  echo "== $b on gpu"
  # float32 and bfloat16 everywhere; float64 where the backend supports it on this device.
  if ! "$PY" -m pytest conformance --backend="$b" --device=gpu --hypothesis-profile=gpu \
      -p no:cacheprovider -q --report="$OUT/$b.json"; then
    status=1
  fi
  ran+=("$OUT/$b.json")
done

if [ ${#ran[@]} -eq 0 ]; then
  echo "no framework sees a GPU: nothing run" >&2
  exit 1
fi
"$PY" -m conformance.report "${ran[@]}" > "$OUT/README.md"
echo "summary: $OUT/README.md"
exit $status

#!/usr/bin/env bash
# Z-Forcing training-step benchmark on CUDA: reference vs fast vs fused-LSTM floor at the TIMIT
# and MNIST sizes, one JSON object per run (benchmarks/bench_step.py --device cuda --json).
#
#   bash benchmarks/gpu_bench.sh                 # from the repository root
#   REPEATS=50 bash benchmarks/gpu_bench.sh      # more timed steps per variant
#   OUT=results.json bash benchmarks/gpu_bench.sh
#   COMPILE=1 bash benchmarks/gpu_bench.sh       # also time compile_step=True (Triton; compiles first)
#
# Installs requirements.txt only when torch is missing. Exits non-zero without a visible GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
REPEATS="${REPEATS:-30}"
SIZES="${SIZES:-timit,mnist}"
OUT="${OUT:-}"
COMPILE="${COMPILE:-0}"

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "torch missing: pip install -r requirements.txt" >&2
  "$PYTHON" -m pip install -q -r requirements.txt
fi
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch; nothing to benchmark")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}", file=sys.stderr)
PY
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv >&2 || true

ARGS=(--device cuda --json --sizes "$SIZES" --repeats "$REPEATS" --warmup 3)
if [[ "$COMPILE" == "1" ]]; then
  ARGS+=(--compile-step)
fi
if [[ -n "$OUT" ]]; then
  "$PYTHON" benchmarks/bench_step.py "${ARGS[@]}" | tee "$OUT"
else
  "$PYTHON" benchmarks/bench_step.py "${ARGS[@]}"
fi

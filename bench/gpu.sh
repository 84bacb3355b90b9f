#!/usr/bin/env bash
# The GPU checks in one prepared run (< 10 min on an H100/H200-class GPU): paper-preset query and report in bf16,
# stage-1 and generation steps under DeepSpeed ZeRO-2 bf16, the step's samples/s. Without a GPU it runs the same
# paths on the tiny preset on the CPU. Wheels the GPU image lacks may wait in .whl/: DeepSpeed (`pip wheel --no-deps
# deepspeed==0.19.8`), hjson, pydantic, pydantic-core, annotated-types, typing-inspection, pydicom, pylibjpeg*.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import deepspeed" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/chex-site .whl/*.whl
  export PYTHONPATH="/tmp/chex-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  exec "$PY" bench/gpu.py --preset "${PRESET:-paper}" --repeats "${REPEATS:-5}"
fi
echo "no GPU: the CPU fallback (tiny preset)"
exec "$PY" bench/gpu.py --preset tiny --repeats "${REPEATS:-2}"

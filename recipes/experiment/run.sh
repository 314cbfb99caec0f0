#!/usr/bin/env bash
# The SSB experiment of docs/experiment/DESIGN.md, stage by stage; every stage resumes where it stopped.
#   bash recipes/experiment/run.sh select   # candidate difficulties on the validation split: hinted vs unhinted
#   bash recipes/experiment/run.sh data     # training data of the chosen difficulty, grown to >= 200 kept answers
# Run it with the vLLM environment's python first on PATH (`make install-vllm`, then
# PATH="$PWD/.venv-vllm/bin:$PATH"). Outputs go to $EXPERIMENT_DIR (default outputs/experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EXPERIMENT_DIR:-outputs/experiment}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PREP=recipes/experiment/configs/prep.yaml
VALIDATION_SEED=777 TRAIN_SEED=42 MIN_KEPT=200
declare -A CANDIDATES=(
  [1digit]='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}'
  [1digit_addsub]='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"]}'
  [2digit_addsub]='{"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+", "-"]}'
)
stage() { echo; echo "=== [$(date +%H:%M:%S), ${SECONDS}s] $*"; }

select_stage() {
  for name in 1digit 1digit_addsub 2digit_addsub; do
    dir="$OUT/select/$name"
    if [ -f "$dir/teacher_gain.json" ]; then echo "$name: done"; continue; fi
    stage "select: $name (validation split, seed $VALIDATION_SEED)"
    args=(--config "$PREP" --task_config "${CANDIDATES[$name]}" --source_seed "$VALIDATION_SEED" --num_questions 64
          --output_dir "$dir")
    python recipes/prepare_ssb_data.py "${args[@]}" || true   # no kept answer is a result here, not a failure
    python recipes/experiment/teacher_gain.py "${args[@]}"
  done
  python recipes/experiment/choose.py "$OUT/select"
}

data_stage() {
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  questions=512
  while :; do
    stage "data: $chosen, $questions training questions (seed $TRAIN_SEED)"
    python recipes/prepare_ssb_data.py --config "$PREP" --task_config "${CANDIDATES[$chosen]}" \
      --source_seed "$TRAIN_SEED" --num_questions "$questions" --output_dir "$OUT/data/round1"
    kept=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['teacher_kept'])" \
      "$OUT/data/round1/ssb_summary.json")
    echo "kept teacher answers: $kept"
    [ "$kept" -ge "$MIN_KEPT" ] && break
    questions=$((questions + 512))   # the finished shards are kept; only the new questions are sampled
  done
}

case "${1:-}" in
  select) select_stage ;;
  data) data_stage ;;
  *) echo "usage: $0 select|data" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The SSB experiment of docs/experiment/DESIGN.md, stage by stage; every stage resumes where it stopped.
#   bash recipes/experiment/run.sh select   # candidate difficulties on the validation split: hinted vs unhinted
#   bash recipes/experiment/run.sh data     # training data of the chosen difficulty, grown to >= 200 kept answers
#   bash recipes/experiment/run.sh train    # the arms: SFT and SSB x seeds 0-2, SSB variants (seed 0)
#   bash recipes/experiment/run.sh validate # base, SFT, SSB and the variants on 300 validation questions
# (GRPO, round 2 and the test-split evaluation of DESIGN.md are not in this script yet.)
# EXPERIMENT_MAX_STEPS and EXPERIMENT_EVAL_QUESTIONS shrink the train / validate stages for a smoke run;
# EXPERIMENT_VLLM_MEMORY lowers vLLM's memory share when another engine runs beside it.
# Run it with the vLLM environment's python first on PATH (`make install-vllm`, then
# PATH="$PWD/.venv-vllm/bin:$PATH"). Outputs go to $EXPERIMENT_DIR (default outputs/experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EXPERIMENT_DIR:-outputs/experiment}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PREP=recipes/experiment/configs/prep.yaml
TRAIN=recipes/experiment/configs/train.yaml
VALIDATION_SEED=777 TRAIN_SEED=42 MIN_KEPT=200
MAX_STEPS=${EXPERIMENT_MAX_STEPS:--1} EVAL_QUESTIONS=${EXPERIMENT_EVAL_QUESTIONS:-300}
VLLM_MEMORY=${EXPERIMENT_VLLM_MEMORY:-0.5}  # vLLM's share of memory (of CPU memory on CPU)
declare -A ARMS=(
  [sft]="--kd_weight 0 --ce_weight 1"
  [ssb]="--kd_weight 1 --ce_weight 0"
  [ssb_ce05]="--kd_weight 1 --ce_weight 0.5"
  [ssb_6ep]="--kd_weight 1 --ce_weight 0 --num_train_epochs 6"
)
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

train_arm() {  # train_arm NAME SEED: one arm on the round-1 data; a finished arm is skipped
  local dir="$OUT/train/$1-seed$2"
  if [ -f "$dir/adapter_model.safetensors" ]; then echo "$1 seed $2: done"; return; fi
  stage "train: $1, seed $2"
  # shellcheck disable=SC2086 # the arm's flags are words
  python recipes/train_ssb.py --config "$TRAIN" --dataset_name "$OUT/data/round1" --output_dir "$dir" --seed "$2" \
    --max_steps "$MAX_STEPS" ${ARMS[$1]}
}

train_stage() {
  for seed in 0 1 2; do train_arm sft "$seed"; train_arm ssb "$seed"; done
  train_arm ssb_ce05 0
  train_arm ssb_6ep 0
}

validate_stage() {
  local chosen models=("base=bundled:smollm2-135m-instruct")
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  for arm in sft ssb ssb_ce05 ssb_6ep; do models+=("$arm=$OUT/train/$arm-seed0"); done
  stage "validate: ${#models[@]} models on $EVAL_QUESTIONS validation questions (seed $VALIDATION_SEED)"
  python recipes/evaluate.py --source reasoning_gym:basic_arithmetic --task_config "${CANDIDATES[$chosen]}" \
    --source_seed "$VALIDATION_SEED" --num_questions $((EVAL_QUESTIONS + 64)) --limit "$EVAL_QUESTIONS" \
    --answer_fallbacks true --greedy true --num_samples 0 --max_new_tokens 160 --device cpu --dtype float32 \
    --generation_backend vllm --vllm_gpu_memory_utilization "$VLLM_MEMORY" --exclude_questions_from "$OUT/select/$chosen" "$OUT/data/round1" \
    --output_dir "$OUT/validate" --models "${models[@]}"
}

case "${1:-}" in
  select) select_stage ;;
  data) data_stage ;;
  train) train_stage ;;
  validate) validate_stage ;;
  *) echo "usage: $0 select|data|train|validate" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The SSB experiment of docs/experiment/DESIGN.md, stage by stage; every stage resumes where it stopped.
#   bash recipes/experiment/run.sh select   # candidate difficulties on the validation split: hinted vs unhinted
#   bash recipes/experiment/run.sh data     # training data of the chosen difficulty, grown to >= 200 kept answers
#   bash recipes/experiment/run.sh train    # the arms: SFT and SSB x seeds 0-2, SSB variants (seed 0)
#   bash recipes/experiment/run.sh validate # base and the variants on 300 validation questions, one folder each
#   bash recipes/experiment/run.sh grpo     # the GRPO anchor (TRL GRPOTrainer) at a generation-token budget
#   bash recipes/experiment/run.sh test     # base, SFT, SSB x 3 seeds, the chosen variant, GRPO on the test split
#                                           # (greedy + mean@4) and greedy on the neighbouring task `products`
#   bash recipes/experiment/run.sh round2   # iterative SSB: the round-1 SSB model (seed 0) prepares data, trains
#                                           # again; round 2 vs round 1 vs base on the test split and the neighbour
#                                           # (EXPERIMENT_ROUND1_ARM=ssb_ce05-seed0: amendment 9's exploratory start;
#                                           # EXPERIMENT_ROUND2_QUESTIONS: fewer questions than round 1's)
#   bash recipes/experiment/run.sh report   # tables and plots into docs/experiment/
#   bash recipes/experiment/run.sh all      # every stage above, in order (grpo only if EXPERIMENT_GRPO_BUDGET is set)
# EXPERIMENT_MAX_STEPS and EXPERIMENT_EVAL_QUESTIONS shrink the train / validate / test stages for a smoke run;
# EXPERIMENT_GRPO_BUDGET sets GRPO's completion-token budget (default: the tokens stage `data` generated);
# EXPERIMENT_TEST_SAMPLES the samples per test question for mean@n of base and the seed-0 arms (default 4; 0 = none);
# EXPERIMENT_VLLM_MEMORY lowers vLLM's memory share when another engine runs beside it.
# Run it with the vLLM environment's python first on PATH (`make install-vllm`, then
# PATH="$PWD/.venv-vllm/bin:$PATH"); GRPO runs in the same environment. Outputs go to $EXPERIMENT_DIR
# (default outputs/experiment); the report to $EXPERIMENT_DOCS (default docs/experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EXPERIMENT_DIR:-outputs/experiment}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PREP=recipes/experiment/configs/prep.yaml
TRAIN=recipes/experiment/configs/train.yaml
VALIDATION_SEED=777 TRAIN_SEED=42 MIN_KEPT=200
MAX_STEPS=${EXPERIMENT_MAX_STEPS:--1} EVAL_QUESTIONS=${EXPERIMENT_EVAL_QUESTIONS:-300}
TEST_SAMPLES=${EXPERIMENT_TEST_SAMPLES:-4} DOCS=${EXPERIMENT_DOCS:-docs/experiment}
TEST_SEED=1234
VLLM_MEMORY=${EXPERIMENT_VLLM_MEMORY:-0.5}  # vLLM's share of memory (of CPU memory on CPU)
declare -A ARMS=(
  [sft]="--kd_weight 0 --ce_weight 1"
  [ssb]="--kd_weight 1 --ce_weight 0"
  [ssb_ce05]="--kd_weight 1 --ce_weight 0.5"
)
VARIANTS=(ssb_ce05)  # the 6-epoch and T = 1 variants of the design were dropped for time (DESIGN.md, amendment 6)
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
}

evaluate_one() {  # evaluate_one FOLDER LABEL MODEL SEED QUESTIONS SAMPLES TASK TASK_CONFIG: a finished one is skipped
  local dir="$1/$2" chosen exclude
  if [ -f "$dir/results.json" ] && [ -f "$dir/accuracy.png" ]; then echo "$2 in $1: done"; return; fi
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  # Every question an arm trained on is dropped for all arms (the task has ~1.2k distinct questions, so splits by
  # seed overlap), as are repeats; 4x the questions are drawn so that $5 remain.
  exclude=("$OUT/select/$chosen" "$OUT/data/round1")
  [ -f "$OUT/train/grpo-seed0/grpo_questions.jsonl" ] && exclude+=("$OUT/train/grpo-seed0/grpo_questions.jsonl")
  [ -n "${EXTRA_EXCLUDE:-}" ] && exclude+=("$EXTRA_EXCLUDE")   # round 2's data, for its own test folder
  stage "evaluate: $2 on $5 questions of $7 (seed $4, $6 samples) -> $dir"
  python recipes/evaluate.py --dataset_name "reasoning_gym:$7" --task_config "$8" \
    --source_seed "$4" --num_questions $((4 * $5)) --limit "$5" --unique_questions true \
    --answer_fallbacks true --greedy true --num_samples "$6" --sampling_temperature 0.8 --sampling_top_k 50 \
    --sampling_top_p 1.0 --max_new_tokens 160 --device cpu --dtype float32 \
    --generation_backend vllm --vllm_gpu_memory_utilization "$VLLM_MEMORY" \
    --exclude_questions_from "${exclude[@]}" --output_dir "$dir" --models "$2=$3"
}

model_of() {  # model_of LABEL: the model a label stands for
  if [ "$1" = base ]; then echo "bundled:smollm2-135m-instruct"; else echo "$OUT/train/$1"; fi
}

validate_stage() {  # base, SSB and the variants (seed 0) on the validation split; decides the variant for test
  local chosen label
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  for label in base sft-seed0 ssb-seed0 "${VARIANTS[@]/%/-seed0}"; do
    evaluate_one "$OUT/validate" "$label" "$(model_of "$label")" "$VALIDATION_SEED" "$EVAL_QUESTIONS" 0 \
      basic_arithmetic "${CANDIDATES[$chosen]}"
  done
  echo "variant for the test split: $(python recipes/experiment/choose.py "$OUT/validate" \
    --variant_among "${VARIANTS[@]/%/-seed0}")"
}

grpo_stage() {  # GRPO on the training questions, stopped at the generation budget of SSB's data preparation
  local dir="$OUT/train/grpo-seed0" chosen questions budget
  if [ -f "$dir/adapter_model.safetensors" ]; then echo "grpo seed 0: done"; return; fi
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  questions=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['questions'])" "$OUT/data/round1/ssb_summary.json")
  budget=${EXPERIMENT_GRPO_BUDGET:-$(python recipes/experiment/generation_budget.py "$OUT/data/round1")}
  stage "grpo: $questions training questions, budget $budget completion tokens"
  python recipes/experiment/grpo.py --config recipes/experiment/configs/grpo.yaml --task_config "${CANDIDATES[$chosen]}" \
    --source_seed "$TRAIN_SEED" --num_questions "$questions" --generation_token_budget "$budget" \
    --max_steps "$MAX_STEPS" --output_dir "$dir"
}

test_stage() {  # the test split, once: the pre-registered arms; then the neighbouring task, greedy
  local chosen variant label samples labels=(base) products='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}'
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  variant=$(python recipes/experiment/choose.py "$OUT/validate" --variant_among "${VARIANTS[@]/%/-seed0}")
  for seed in 0 1 2; do labels+=("sft-seed$seed" "ssb-seed$seed"); done
  labels+=("$variant")
  [ -f "$OUT/train/grpo-seed0/adapter_model.safetensors" ] && labels+=(grpo-seed0)
  for label in "${labels[@]}"; do  # mean@n for the seed-0 arms and base (samples cost 4x greedy), greedy for all
    samples=0
    [[ $label == base || $label == *-seed0 ]] && samples=$TEST_SAMPLES
    evaluate_one "$OUT/test" "$label" "$(model_of "$label")" "$TEST_SEED" "$EVAL_QUESTIONS" "$samples" \
      basic_arithmetic "${CANDIDATES[$chosen]}"
  done
  for label in "${labels[@]}"; do
    evaluate_one "$OUT/neighbour" "$label" "$(model_of "$label")" "$TEST_SEED" "$EVAL_QUESTIONS" 0 products "$products"
  done
}

round2_stage() {  # DESIGN.md, amendments 8-9: same training questions, a round-1 model as data maker and start
  local round1=${EXPERIMENT_ROUND1_ARM:-ssb-seed0} tag=round2 chosen questions label arm
  [ "$round1" != ssb-seed0 ] && tag="round2-from-$round1"   # amendment 9: an exploratory start
  arm=${round1%-seed*}
  local model="$OUT/$tag/model" dir="$OUT/train/${arm}_round2-seed0"
  local products='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}'
  chosen=$(python recipes/experiment/choose.py "$OUT/select" --name_only)
  if [ ! -f "$model/config.json" ]; then
    stage "$tag: merge $round1 into its base -> $model"
    python recipes/experiment/merge_adapter.py "$OUT/train/$round1" "$model"
  fi
  questions=${EXPERIMENT_ROUND2_QUESTIONS:-$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['questions'])" \
    "$OUT/data/round1/ssb_summary.json")}
  stage "$tag: data from $model, $questions training questions (seed $TRAIN_SEED)"
  python recipes/prepare_ssb_data.py --config "$PREP" --model_name_or_path "$model" \
    --task_config "${CANDIDATES[$chosen]}" --source_seed "$TRAIN_SEED" --num_questions "$questions" \
    --output_dir "$OUT/data/$tag"
  if [ -f "$dir/adapter_model.safetensors" ]; then echo "$arm round 2 seed 0: done"; else
    stage "$tag: train $arm from $model"
    # shellcheck disable=SC2086 # the arm's flags are words
    python recipes/train_ssb.py --config "$TRAIN" --model_name_or_path "$model" --dataset_name "$OUT/data/$tag" \
      --output_dir "$dir" --seed 0 --max_steps "$MAX_STEPS" ${ARMS[$arm]}
  fi
  # Round 2 keeps answers to other questions than round 1, so its test folder also drops those: base and round 1
  # are scored again there (greedy, deterministic), and every comparison is paired on the same questions.
  for label in base "$round1" "${arm}_round2-seed0"; do
    EXTRA_EXCLUDE="$OUT/data/$tag" evaluate_one "$OUT/$tag/test" "$label" "$(model_of "$label")" "$TEST_SEED" \
      "$EVAL_QUESTIONS" 0 basic_arithmetic "${CANDIDATES[$chosen]}"
    evaluate_one "$OUT/$tag/neighbour" "$label" "$(model_of "$label")" "$TEST_SEED" "$EVAL_QUESTIONS" 0 products \
      "$products"
  done
}

report_stage() {
  python recipes/experiment/analyze.py "$OUT/validate" --output "$DOCS/validation_results.md"
  python recipes/experiment/analyze.py "$OUT/test" "$OUT/neighbour" --output "$DOCS/test_results.md"
  for tag in round2 round2-from-ssb_ce05-seed0; do
    if [ -d "$OUT/$tag/test" ]; then
      python recipes/experiment/analyze.py "$OUT/$tag/test" "$OUT/$tag/neighbour" --output "$DOCS/${tag}_results.md"
    fi
  done
}

case "${1:-}" in
  select) select_stage ;;
  data) data_stage ;;
  train) train_stage ;;
  validate) validate_stage ;;
  grpo) grpo_stage ;;
  test) test_stage ;;
  round2) round2_stage ;;
  report) report_stage ;;
  all)  # GRPO only with a budget set: at the matched budget it needs ~13 hours on a 2-core CPU (DESIGN.md)
    select_stage; data_stage; train_stage; validate_stage
    if [ -n "${EXPERIMENT_GRPO_BUDGET:-}" ]; then grpo_stage; fi
    test_stage; report_stage; round2_stage; report_stage ;;  # round 2 stops the script where it keeps no answer
  *) echo "usage: $0 select|data|train|validate|grpo|test|round2|report|all" >&2; exit 2 ;;
esac

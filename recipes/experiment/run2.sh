#!/usr/bin/env bash
# Experiment 2 of docs/experiment/DESIGN2.md: does SSB beat SFT once the hinted teacher is better than the student?
# Stage by stage; every stage resumes where it stopped.
#   bash recipes/experiment/run2.sh select  # every hint format's gain and soundness on the validation split
#   bash recipes/experiment/run2.sh choose  # the written rule picks a format (or none: then that is the result)
#   bash recipes/experiment/run2.sh yield   # reported only: kept answers when formats also serve unpaired questions
#   bash recipes/experiment/run2.sh data    # training data with the chosen format, grown to >= 200 kept answers
#   bash recipes/experiment/run2.sh train   # SFT, SSB (KD) and SSB + CE 0.5, seeds 0-2, on the same kept answers
#   bash recipes/experiment/run2.sh test    # base and every arm on 300 test questions and the neighbouring task
#   bash recipes/experiment/run2.sh stage5 [JOB...]  # other formats' SSB (and the T = 1 variant) on stage 2's questions
#                                                    # (JOB is FORMAT or t1, seed 0; FORMAT:SEED trains another seed)
#   bash recipes/experiment/run2.sh report  # tables into docs/experiment/
# EXPERIMENT2_SELECT_QUESTIONS: the first size of stage 1 (default 512); EXPERIMENT_MAX_STEPS and
# EXPERIMENT_EVAL_QUESTIONS shrink train / test for a smoke run. Run it with the vLLM environment's python first on
# PATH (`make install-vllm`, then PATH="$PWD/.venv-vllm/bin:$PATH"). Outputs go to $EXPERIMENT2_DIR (default
# outputs/experiment2), the report to $EXPERIMENT_DOCS (default docs/experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EXPERIMENT2_DIR:-outputs/experiment2}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PREP=recipes/experiment/configs/prep.yaml
TRAIN=recipes/experiment/configs/train.yaml
TASK='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}'
PRODUCTS='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}'
VALIDATION_SEED=777 TRAIN_SEED=42 TEST_SEED=1234 MIN_KEPT=200 HINT_CHECK_SAMPLES=4
MAX_STEPS=${EXPERIMENT_MAX_STEPS:--1} EVAL_QUESTIONS=${EXPERIMENT_EVAL_QUESTIONS:-300}
DOCS=${EXPERIMENT_DOCS:-docs/experiment}
# Share of the memory each vLLM engine reserves (on CPU, for its KV cache): two engines, one per core, must fit
# (0.3 of 24 GiB still holds ~150k tokens of this model's cache: more than the engine schedules at once)
VLLM_MEMORY=${EXPERIMENT_VLLM_MEMORY:-0.3}
FORMATS=(contrastive contrastive_short correct_solution answer_only)  # the first one makes the shared rollouts
declare -A ARMS=(
  [sft]="--kd_weight 0 --ce_weight 1"
  [ssb]="--kd_weight 1 --ce_weight 0"
  [ssb_ce05]="--kd_weight 1 --ce_weight 0.5"
)
stage() { echo; echo "=== [$(date +%H:%M:%S), ${SECONDS}s] $*"; }

share_rollouts() {  # share_rollouts FOLDER: the first format's rollouts (and settings) into FOLDER, never overwriting
  local from="$OUT/select/${FORMATS[0]}/ssb_work"
  mkdir -p "$1/ssb_work/rollouts"
  cp -n "$from"/rollouts/shard-*.jsonl "$1/ssb_work/rollouts/"
  [ -f "$1/ssb_work/settings.json" ] || cp "$from/settings.json" "$1/ssb_work/settings.json"
}

gain_of() {  # gain_of FOLDER [FLAGS...]: prepare (resumably) and measure the hint's gain there
  local dir=$1; shift
  python recipes/experiment/teacher_gain.py --config "$PREP" --task_config "$TASK" --source_seed "$VALIDATION_SEED" \
    --hint_check_samples "$HINT_CHECK_SAMPLES" --output_dir "$dir" --vllm_gpu_memory_utilization "$VLLM_MEMORY" "$@"
}

widest_interval() {  # the widest gain interval (points) over the formats' teacher_gain.json
  python - "$OUT/select" "${FORMATS[@]}" <<'PY'
import json, sys
widths = [json.load(open(f"{sys.argv[1]}/{name}/teacher_gain.json"))["gain_interval_points"] for name in sys.argv[2:]]
print(max((high - low) / 2 for low, high in widths))
PY
}

select_stage() {
  local questions=${EXPERIMENT2_SELECT_QUESTIONS:-512} format width
  while :; do
    for format in "${FORMATS[@]}"; do
      stage "select: $format, $questions validation questions (seed $VALIDATION_SEED)"
      [ "$format" != "${FORMATS[0]}" ] && share_rollouts "$OUT/select/$format"
      gain_of "$OUT/select/$format" --num_questions "$questions" --teacher_hint "$format"
    done
    width=$(widest_interval)
    echo "widest gain interval: +-$width points at $questions questions"
    if python -c "import sys; sys.exit(float(sys.argv[1]) <= 6 or int(sys.argv[2]) >= 1024)" "$width" "$questions"; then
      questions=$((questions + 256))  # finished shards are kept; only the new questions are sampled
    else
      break
    fi
  done
  python recipes/experiment/choose.py "$OUT/select" --formats
}

chosen_format() { python recipes/experiment/choose.py "$OUT/select" --formats --name_only; }

yield_stage() {  # reported only (DESIGN2.md): the formats that need no wrong attempt, serving unpaired questions too
  local questions format
  questions=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['questions_with_rollouts'])" \
    "$OUT/select/${FORMATS[0]}/teacher_gain.json")
  for format in correct_solution answer_only; do
    stage "yield: $format with unpaired questions, $questions validation questions"
    share_rollouts "$OUT/yield/$format"
    gain_of "$OUT/yield/$format" --num_questions "$questions" --teacher_hint "$format" \
      --teacher_unpaired_questions true
  done
}

data_stage() {
  local chosen questions=512 kept
  chosen=$(chosen_format)
  if [ "$chosen" = none ]; then echo "no format qualified in stage 1: that is the result (DESIGN2.md)"; return; fi
  while :; do
    stage "data: $chosen, $questions training questions (seed $TRAIN_SEED)"
    python recipes/prepare_ssb_data.py --config "$PREP" --task_config "$TASK" --source_seed "$TRAIN_SEED" \
      --teacher_hint "$chosen" --hint_check_samples "$HINT_CHECK_SAMPLES" --num_questions "$questions" \
      --output_dir "$OUT/data/$chosen" --vllm_gpu_memory_utilization "$VLLM_MEMORY"
    kept=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['teacher_kept'])" \
      "$OUT/data/$chosen/ssb_summary.json")
    echo "kept teacher answers: $kept"
    [ "$kept" -ge "$MIN_KEPT" ] && break
    questions=$((questions + 512))
  done
}

train_stage() {
  local chosen arm seed dir
  chosen=$(chosen_format)
  [ "$chosen" = none ] && { echo "no format chosen: nothing to train"; return; }
  for seed in 0 1 2; do
    for arm in sft ssb ssb_ce05; do
      dir="$OUT/train/$arm-seed$seed"
      if [ -f "$dir/adapter_model.safetensors" ]; then echo "$arm seed $seed: done"; continue; fi
      stage "train: $arm, seed $seed"
      # shellcheck disable=SC2086 # the arm's flags are words
      python recipes/train_ssb.py --config "$TRAIN" --dataset_name "$OUT/data/$chosen" --output_dir "$dir" \
        --seed "$seed" --max_steps "$MAX_STEPS" ${ARMS[$arm]}
    done
  done
}

evaluate_one() {  # evaluate_one FOLDER LABEL MODEL TASK TASK_CONFIG: greedy pass@1; a finished one is skipped
  local dir="$1/$2" chosen
  if [ -f "$dir/results.json" ]; then echo "$2 in $1: done"; return; fi
  chosen=$(chosen_format)
  stage "evaluate: $2 on $EVAL_QUESTIONS questions of $4 (seed $TEST_SEED) -> $dir"
  python recipes/evaluate.py --dataset_name "reasoning_gym:$4" --task_config "$5" --source_seed "$TEST_SEED" \
    --num_questions $((4 * EVAL_QUESTIONS)) --limit "$EVAL_QUESTIONS" --unique_questions true \
    --answer_fallbacks true --greedy true --num_samples 0 --max_new_tokens 160 --device cpu --dtype float32 \
    --generation_backend vllm --vllm_gpu_memory_utilization "$VLLM_MEMORY" --exclude_questions_from "$OUT/select/$chosen" "$OUT/data/$chosen" \
    --output_dir "$dir" --models "$2=$3"
}

test_stage() {
  local chosen label model labels=(base)
  chosen=$(chosen_format)
  [ "$chosen" = none ] && { echo "no format chosen: nothing to test"; return; }
  for seed in 0 1 2; do labels+=("sft-seed$seed" "ssb-seed$seed" "ssb_ce05-seed$seed"); done
  for label in "${labels[@]}"; do
    model="$OUT/train/$label"
    [ "$label" = base ] && model=bundled:smollm2-135m-instruct
    if [ "$label" != base ] && [ ! -f "$model/adapter_model.safetensors" ]; then echo "$label: not trained yet"; continue; fi
    evaluate_one "$OUT/test" "$label" "$model" basic_arithmetic "$TASK"
    evaluate_one "$OUT/neighbour" "$label" "$model" products "$PRODUCTS"
  done
}

STAGE5=$OUT/stage5
STAGE5_JOBS=(correct_solution contrastive t1 contrastive_short)  # DESIGN2.md's priority order

copy_work() {  # copy_work FOLDER PART...: parts of stage 2's work folder (and its settings) into FOLDER, never overwriting
  local to="$1/ssb_work" from part
  from="$OUT/data/$(chosen_format)/ssb_work"; shift
  mkdir -p "$to"
  for part in "$@"; do mkdir -p "$to/$part"; cp -rn "$from/$part"/. "$to/$part/"; done
  [ -f "$to/settings.json" ] || cp "$from/settings.json" "$to/settings.json"
}

stage5_job() {  # stage5_job FORMAT|t1[:SEED]: its data from stage 2's questions and rollouts, SSB (KD), its tests
  local name=${1%%:*} seed=0 chosen data model questions prep_flags train_flags=()
  [[ $1 == *:* ]] && seed=${1#*:}
  chosen=$(chosen_format); data="$STAGE5/data/$name"; model="$STAGE5/train/ssb_$name-seed$seed"
  questions=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['questions'])" \
    "$OUT/data/$chosen/ssb_summary.json")
  if [ "$name" = t1 ]; then  # only the soft labels are redone
    copy_work "$data" rollouts teacher hint_check
    prep_flags=(--teacher_hint "$chosen" --hint_check_samples "$HINT_CHECK_SAMPLES" --soft_label_temperature 1)
    train_flags=(--temperature 1)
  else  # only the teacher stage differs; the relation's x-axis is the stage-1 gain, so no unhinted samples here
    copy_work "$data" rollouts
    prep_flags=(--teacher_hint "$name" --hint_check_samples 0)
  fi
  stage "stage 5: $name data, $questions training questions (seed $TRAIN_SEED)"
  python recipes/prepare_ssb_data.py --config "$PREP" --task_config "$TASK" --source_seed "$TRAIN_SEED" \
    --num_questions "$questions" --output_dir "$data" --vllm_gpu_memory_utilization "$VLLM_MEMORY" "${prep_flags[@]}"
  if [ ! -f "$model/adapter_model.safetensors" ]; then
    stage "stage 5: train SSB (KD), seed $seed, on $name"
    # shellcheck disable=SC2086 # the arm's flags are words
    python recipes/train_ssb.py --config "$TRAIN" --dataset_name "$data" --output_dir "$model" --seed "$seed" \
      --max_steps "$MAX_STEPS" ${ARMS[ssb]} "${train_flags[@]}"
  fi
  for suite in test neighbour; do  # stage 4's base, SFT and SSB seed 0 beside them, for the paired tables
    mkdir -p "$STAGE5/$suite"
    for label in base sft-seed0 ssb-seed0; do ln -sfn "../../$suite/$label" "$STAGE5/$suite/$label"; done
  done
  evaluate_one "$STAGE5/test" "ssb_$name-seed$seed" "$model" basic_arithmetic "$TASK"
  evaluate_one "$STAGE5/neighbour" "ssb_$name-seed$seed" "$model" products "$PRODUCTS"
}

report_stage() {
  { echo "# Experiment 2, stage 1: hint formats on the validation split"; echo
    python recipes/experiment/choose.py "$OUT/select" --formats
    if [ -d "$OUT/yield" ]; then
      echo; echo "## Serving unpaired questions too (reported only)"; echo
      python recipes/experiment/choose.py "$OUT/yield" --formats | sed '/^chosen:/d'
    fi; } > "$DOCS/select2_results.md"
  if [ -d "$OUT/test" ]; then
    python recipes/experiment/analyze.py "$OUT/test" "$OUT/neighbour" --output "$DOCS/test2_results.md"
  fi
  if [ -d "$STAGE5/test" ]; then
    python recipes/experiment/analyze.py "$STAGE5/test" "$STAGE5/neighbour" --output "$DOCS/stage5_results.md"
    python recipes/experiment/relation.py "$OUT" --output "$DOCS/relation2_results.md"
  fi
}

case "${1:-}" in
  select) select_stage ;;
  choose) python recipes/experiment/choose.py "$OUT/select" --formats ;;
  yield) yield_stage ;;
  data) data_stage ;;
  train) train_stage ;;
  test) test_stage ;;
  stage5) shift; jobs=("$@"); [ ${#jobs[@]} -gt 0 ] || jobs=("${STAGE5_JOBS[@]}")
    for job in "${jobs[@]}"; do stage5_job "$job"; done ;;
  report) report_stage ;;
  *) echo "usage: $0 select|choose|yield|data|train|test|stage5 [JOB[:SEED]...]|report" >&2; exit 2 ;;
esac

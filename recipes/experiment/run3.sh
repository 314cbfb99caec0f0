#!/usr/bin/env bash
# Experiment 3 of docs/experiment/DESIGN3.md: is SSB's null result a matter of who wrote the tokens, or of the
# learning rate? Stage by stage; every stage resumes where it stopped.
#   bash recipes/experiment/run3.sh data        # 1,024 training questions: rollouts, teacher answers, hint check
#                                               # (train_on teacher_answers), then the same rollouts as on-policy SSB
#                                               # and RFT rows (train_on rollouts / correct_rollouts: rows only)
#   bash recipes/experiment/run3.sh diagnose    # stage 0: KL(hinted || unhinted) per token, by position and text kind
#   bash recipes/experiment/run3.sh lr [ARM...] # seed 0 at every learning rate of the grid, each on validation
#                                               # (ARM:LR for one of them: two cores can share an arm's grid)
#   bash recipes/experiment/run3.sh picks       # the written rule picks each arm's learning rate (before any test)
#   bash recipes/experiment/run3.sh seeds [ARM...]  # seeds 1 and 2 at each arm's pick
#   bash recipes/experiment/run3.sh test [ARM...]   # base and every arm's seeds on 300 test questions and products
#                                                   # (with ARMs, base only when one of them is `base`)
#   bash recipes/experiment/run3.sh report      # tables into docs/experiment/
#   bash recipes/experiment/run3.sh save        # the small state (generations, logs, results) into $STATE, to commit
#   bash recipes/experiment/run3.sh restore     # that state back into $OUT: a new machine goes on where it stopped
# ARM is on_policy, offline_t1, rft or sft (default: all four, in that order). Two jobs at once (one per core) can
# split the arms: `run3.sh lr on_policy offline_t1` beside `run3.sh lr rft sft`. EXPERIMENT_MAX_STEPS,
# EXPERIMENT_EVAL_QUESTIONS, EXPERIMENT3_VALIDATION_QUESTIONS and EXPERIMENT3_QUESTIONS shrink it for a smoke run. Run
# it with the vLLM environment's python first on PATH (`make install-vllm`, then PATH="$PWD/.venv-vllm/bin:$PATH").
# Outputs go to $EXPERIMENT3_DIR (default outputs/experiment3), the report to $EXPERIMENT_DOCS (default docs/experiment).
# The experiment outlives one machine through `save` / `restore`: the rollouts, teacher answers and hint checks (the
# costly generations; the soft labels are forward passes, redone in minutes), every run's training log and every
# evaluation's results.json, a few MB in $STATE (default docs/experiment/state3). Weights are not kept: a run whose
# evaluation is recorded is done; one trained but not yet evaluated is trained again (same seed, same data).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EXPERIMENT3_DIR:-outputs/experiment3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PREP=recipes/experiment/configs/prep.yaml
TRAIN=recipes/experiment/configs/train.yaml
TASK='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}'
PRODUCTS='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}'
VALIDATION_SEED=777 TRAIN_SEED=42 TEST_SEED=1234 HINT_CHECK_SAMPLES=4
QUESTIONS=${EXPERIMENT3_QUESTIONS:-1024}
STEPS=${EXPERIMENT_MAX_STEPS:-273}  # experiment 2's step budget: 3 epochs of its 362 rows at batch 4
EVAL_QUESTIONS=${EXPERIMENT_EVAL_QUESTIONS:-300} VALIDATION_QUESTIONS=${EXPERIMENT3_VALIDATION_QUESTIONS:-200}
DOCS=${EXPERIMENT_DOCS:-docs/experiment}
STATE=${EXPERIMENT3_STATE:-$DOCS/state3}
VLLM_MEMORY=${EXPERIMENT_VLLM_MEMORY:-0.3}  # two engines, one per core, must fit (as experiment 2)
ALL_ARMS=(on_policy offline_t1 rft sft)
declare -A DATA=([on_policy]=rollouts [offline_t1]=teacher_answers [rft]=correct_rollouts [sft]=teacher_answers)
declare -A LOSS=(
  [on_policy]="--kd_weight 1 --ce_weight 0 --temperature 1"
  [offline_t1]="--kd_weight 1 --ce_weight 0 --temperature 1"
  [rft]="--kd_weight 0 --ce_weight 1 --temperature 1"
  [sft]="--kd_weight 0 --ce_weight 1 --temperature 1"
)
declare -A GRID=([on_policy]="1e-4 3e-4 1e-3" [offline_t1]="1e-4 3e-4 1e-3" [rft]="3e-4 1e-3" [sft]="3e-4 1e-3")
stage() { echo; echo "=== [$(date +%H:%M:%S), ${SECONDS}s] $*"; }
arms_or_all() { if [ $# -gt 0 ]; then echo "$@"; else echo "${ALL_ARMS[@]}"; fi; }

prepare() {  # prepare MODE: the training data in $OUT/data/MODE, its log (with each shard's stage times) beside it
  local mode=$1 dir="$OUT/data/$1"
  mkdir -p "$OUT/logs"
  stage "data: train_on $mode, $QUESTIONS training questions (seed $TRAIN_SEED)"
  python recipes/prepare_ssb_data.py --config "$PREP" --task_config "$TASK" --source_seed "$TRAIN_SEED" \
    --teacher_hint answer_only --hint_check_samples "$HINT_CHECK_SAMPLES" --soft_label_temperature 1 \
    --num_questions "$QUESTIONS" --train_on "$mode" --output_dir "$dir" \
    --vllm_gpu_memory_utilization "$VLLM_MEMORY" 2>&1 | tee -a "$OUT/logs/data_$mode.log"
}

data_stage() {  # data_stage [MODE...]: after `restore` the modes can go side by side, one per core
  local mode modes=("$@")
  [ ${#modes[@]} -gt 0 ] || modes=(teacher_answers rollouts correct_rollouts)
  for mode in "${modes[@]}"; do
    if [ "$mode" = teacher_answers ]; then prepare teacher_answers; continue; fi
    # the same rollouts (and questions) as teacher_answers: only the rows are redone
    if [ ! -d "$OUT/data/$mode/ssb_work" ]; then
      mkdir -p "$OUT/data/$mode/ssb_work"
      for part in settings.json rollouts teacher hint_check; do
        cp -r "$OUT/data/teacher_answers/ssb_work/$part" "$OUT/data/$mode/ssb_work/"
      done
    fi
    prepare "$mode"
  done
}

train_one() {  # train_one ARM LR SEED DIR
  local arm=$1 lr=$2 seed=$3 dir=$4
  if [ -f "$dir/adapter_model.safetensors" ]; then echo "$dir: done"; return; fi
  # A training log restored without its weights (`restore`): kept aside, the run is trained again (same seed, data)
  if [ -f "$dir/trainer_state.json" ]; then mv "$dir/trainer_state.json" "$dir/trainer_state.restored.json"; fi
  stage "train: $arm, lr $lr, seed $seed -> $dir"
  # shellcheck disable=SC2086 # the arm's flags are words
  python recipes/train_ssb.py --config "$TRAIN" --dataset_name "$OUT/data/${DATA[$arm]}" --output_dir "$dir" \
    --seed "$seed" --learning_rate "$lr" --max_steps "$STEPS" ${LOSS[$arm]}
}

# Every arm's training rows: evaluation drops their questions. (The run of RESULTS3.md dropped only the teacher
# answers' questions, so one test question that the RFT and on-policy rows held stayed in; `report` writes the tables
# without it too: test3_results_clean.md.)
TRAINING_SETS=("$OUT/data/teacher_answers" "$OUT/data/rollouts" "$OUT/data/correct_rollouts")

evaluate_one() {  # evaluate_one FOLDER LABEL MODEL TASK TASK_CONFIG SEED QUESTIONS: greedy pass@1; done ones skipped
  local dir="$1/$2"
  if [ -f "$dir/results.json" ]; then echo "$2 in $1: done"; return; fi
  stage "evaluate: $2 on $7 questions of $4 (seed $6) -> $dir"
  python recipes/evaluate.py --dataset_name "reasoning_gym:$4" --task_config "$5" --source_seed "$6" \
    --num_questions $((4 * $7)) --limit "$7" --unique_questions true --answer_fallbacks true --greedy true \
    --num_samples 0 --max_new_tokens 160 --device cpu --dtype float32 --generation_backend vllm \
    --vllm_gpu_memory_utilization "$VLLM_MEMORY" --exclude_questions_from "${TRAINING_SETS[@]}" \
    --output_dir "$dir" --models "$2=$3"
}

lr_stage() {  # lr_stage [ARM | ARM:LR ...]: an arm's whole grid, or one of its learning rates
  local item arm lr lrs
  for item in $(arms_or_all "$@"); do
    arm=${item%%:*} lrs=${GRID[${item%%:*}]}
    [ "$item" = "$arm" ] || lrs=${item#*:}
    for lr in $lrs; do
      if [ -f "$OUT/validation/$arm-lr$lr-seed0/results.json" ]; then echo "$arm lr $lr: done"; continue; fi
      train_one "$arm" "$lr" 0 "$OUT/train/$arm-lr$lr-seed0"
      evaluate_one "$OUT/validation" "$arm-lr$lr-seed0" "$OUT/train/$arm-lr$lr-seed0" basic_arithmetic "$TASK" \
        "$VALIDATION_SEED" "$VALIDATION_QUESTIONS"
    done
  done
}

picked() {  # picked ARM: its learning rate from the recorded picks, spelt as in the grid (the seed-0 run's folder)
  # shellcheck disable=SC2086 # the grid's words
  python -c "import json,sys; pick = json.load(open(sys.argv[1]))[sys.argv[2]]
print(next(lr for lr in sys.argv[3:] if float(lr) == pick))" "$OUT/picks.json" "$1" ${GRID[$1]}
}

picks_stage() {
  python recipes/experiment/lr_picks.py "$OUT/validation" --json "$OUT/picks.json" --output "$DOCS/lr3_results.md"
}

seed_dir() {  # seed_dir ARM SEED: where that seed at the arm's pick is (seed 0 is the learning-rate run itself)
  local lr; lr=$(picked "$1")
  if [ "$2" = 0 ]; then echo "$OUT/train/$1-lr$lr-seed0"; else echo "$OUT/train/$1-seed$2"; fi
}

tested() {  # tested ARM SEED: both test suites recorded for that run
  [ -f "$OUT/test/$1-seed$2/results.json" ] && [ -f "$OUT/neighbour/$1-seed$2/results.json" ]
}

seeds_stage() {
  [ -f "$OUT/picks.json" ] || { echo "no picks yet: run \`run3.sh picks\` first (DESIGN3.md)" >&2; exit 2; }
  local arm seed
  for arm in $(arms_or_all "$@"); do
    for seed in 1 2; do
      if tested "$arm" "$seed"; then echo "$arm seed $seed: tested"; continue; fi
      train_one "$arm" "$(picked "$arm")" "$seed" "$(seed_dir "$arm" "$seed")"
    done
  done
}

test_stage() {
  [ -f "$OUT/picks.json" ] || { echo "no picks yet: run \`run3.sh picks\` first (DESIGN3.md)" >&2; exit 2; }
  local arm seed model
  for arm in $(arms_or_all "$@"); do
    if [ "$arm" = base ] || { [ $# -eq 0 ] && [ "$arm" = "${ALL_ARMS[0]}" ]; }; then  # base: named, or all arms
      evaluate_one "$OUT/test" base bundled:smollm2-135m-instruct basic_arithmetic "$TASK" "$TEST_SEED" \
        "$EVAL_QUESTIONS"
      evaluate_one "$OUT/neighbour" base bundled:smollm2-135m-instruct products "$PRODUCTS" "$TEST_SEED" \
        "$EVAL_QUESTIONS"
      [ "$arm" = base ] && continue
    fi
    for seed in 0 1 2; do
      model=$(seed_dir "$arm" "$seed")
      if tested "$arm" "$seed"; then echo "$arm seed $seed: tested ($model)"; continue; fi
      train_one "$arm" "$(picked "$arm")" "$seed" "$model"  # a no-op when its weights are here
      evaluate_one "$OUT/test" "$arm-seed$seed" "$model" basic_arithmetic "$TASK" "$TEST_SEED" "$EVAL_QUESTIONS"
      evaluate_one "$OUT/neighbour" "$arm-seed$seed" "$model" products "$PRODUCTS" "$TEST_SEED" "$EVAL_QUESTIONS"
    done
  done
}

report_stage() {
  [ -f "$OUT/picks.json" ] && picks_stage
  if [ -d "$OUT/test" ]; then
    python recipes/experiment/analyze.py "$OUT/test" "$OUT/neighbour" --output "$DOCS/test3_results.md" \
      --pairs on_policy:offline_t1 on_policy:sft rft:sft
    python recipes/experiment/analyze.py "$OUT/test" "$OUT/neighbour" --output "$DOCS/test3_results_clean.md" \
      --pairs on_policy:offline_t1 on_policy:sft rft:sft --drop_questions_from "${TRAINING_SETS[@]}"
  fi
  python recipes/experiment/train_logs.py "$OUT/train" --output "$DOCS/train3_logs.md"
  python recipes/experiment/prep_times.py "$OUT/logs" --output "$DOCS/prep3_times.md"
}

save_stage() {  # the small state into $STATE (the generations packed once, when the data stage has finished)
  local work="data/teacher_answers/ssb_work" logs=() file
  [ -d "$OUT/$work" ] || { echo "no data yet in $OUT: run \`run3.sh data\` first" >&2; exit 2; }
  mkdir -p "$STATE"
  if [ -f "$OUT/data/correct_rollouts/ssb_metadata.json" ] && [ ! -f "$STATE/generations.tar.xz" ]; then
    for file in "$OUT"/logs/data_*.log; do logs+=("logs/$(basename "$file")"); done
    tar -C "$OUT" -cJf "$STATE/generations.tar.xz" "$work/settings.json" "$work/rollouts" "$work/teacher" \
      "$work/hint_check" "${logs[@]}"
  fi
  (cd "$OUT" && find . -path ./data -prune -o \( -name trainer_state.json -o -name results.json -o -name picks.json \
    -o -name 'diagnostic*.json' \) -print) | while read -r file; do
    mkdir -p "$STATE/$(dirname "$file")" && cp "$OUT/$file" "$STATE/$file"
  done
  du -sh "$STATE"
}

restore_stage() {  # $STATE back into $OUT, never over a file that is there
  [ -d "$STATE" ] || { echo "nothing saved in $STATE" >&2; exit 2; }
  mkdir -p "$OUT"
  if [ -f "$STATE/generations.tar.xz" ] && [ ! -d "$OUT/data/teacher_answers/ssb_work" ]; then
    tar -C "$OUT" -xJf "$STATE/generations.tar.xz"
    local mode part
    for mode in rollouts correct_rollouts; do  # as data_stage lays them out; only the rows are redone
      mkdir -p "$OUT/data/$mode/ssb_work"
      for part in settings.json rollouts teacher hint_check; do
        cp -r "$OUT/data/teacher_answers/ssb_work/$part" "$OUT/data/$mode/ssb_work/"
      done
    done
  fi
  cp -rn "$STATE"/. "$OUT"/ && rm -f "$OUT/generations.tar.xz"
  echo "restored $STATE into $OUT: now run \`run3.sh data\` (it redoes only the soft labels), then the next stage"
}

case "${1:-}" in
  data) shift; data_stage "$@" ;;
  diagnose) python recipes/experiment/hint_kl.py "$OUT/data/teacher_answers" --output "$DOCS/diagnostic3_results.md" ;;
  lr) shift; lr_stage "$@" ;;
  picks) picks_stage ;;
  seeds) shift; seeds_stage "$@" ;;
  test) shift; test_stage "$@" ;;
  report) report_stage ;;
  save) save_stage ;;
  restore) restore_stage ;;
  *) echo "usage: $0 data [MODE...]|diagnose|lr [ARM[:LR]...]|picks|seeds [ARM...]|test [base|ARM...]|report|save|restore" >&2; exit 2 ;;
esac

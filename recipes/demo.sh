#!/usr/bin/env bash
# The embedded end-to-end demo (`make demo`), offline on a CPU, with the settings the experiments
# (docs/experiment/RESULTS.md, RESULTS2.md, RESULTS3.md) found best for this 135M model:
#   1. soft-label data from the bundled SmolLM2-135M-Instruct on reasoning-gym basic_arithmetic (seed 42), with the
#      answer-only hint, and the check to read before spending compute on SSB: is the hinted teacher better than
#      the model alone? (preparation measures it in every run: the "hint gain" line of its summary)
#   2. RFT data from the same rollouts: the model's own verified answers, no teacher (`--train_on correct_rollouts`:
#      only the rows are redone, in a copy of the data folder)
#   3. training, the same epochs and learning rate for each: RFT (CE on the model's own verified answers: as good as
#      SFT in experiment 3, docs/experiment/RESULTS3.md, and the cheapest to prepare), SSB (soft labels with a
#      hard-label term, KD + CE 0.5: the SSB setting that gained in both of the first experiments) and the
#      hard-label baseline (SFT: CE on the teacher answers, the arm that gained most in experiments 2 and 3)
#   4. evaluation of base / RFT / hard labels / SSB on held-out questions (seed 1234, none seen in training)
#   5. training-curve and accuracy plots, and the results table
# Usage: bash recipes/demo.sh [OUT] [ENGINE]; ENGINE (transformers by default, or vllm: `make demo-vllm`) generates
# the rollouts, the teacher answers and the evaluation answers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
ENGINE=${2:-transformers}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
stage() { echo; echo "=== [$(date +%H:%M:%S), ${SECONDS}s] $*"; }

stage "1/5 prepare SSB data, and the hint check: the teacher (hinted) vs the same model alone"
python recipes/prepare_ssb_data.py --config recipes/configs/demo_data.yaml --output_dir "$OUT/data" \
  --generation_backend "$ENGINE"
stage "2/5 RFT data: the same rollouts, the model's own verified answers (--train_on correct_rollouts)"
# A copy of the finished data folder switched to another --train_on redoes only the rows (seconds): no generation.
rm -rf "$OUT/rft_data" && cp -r "$OUT/data" "$OUT/rft_data"
python recipes/prepare_ssb_data.py --config recipes/configs/demo_data.yaml --output_dir "$OUT/rft_data" \
  --generation_backend "$ENGINE" --train_on correct_rollouts
stage "3/5 train: RFT, SSB (soft labels + CE 0.5) and the hard-label baseline (SFT)"
# A rerun of the demo trains afresh (--overwrite_output_dir) and replaces the evaluation (--overwrite; answers already
# saved for the same model and settings, the base model's, are reused): the data step resumes.
python recipes/train_ssb.py --config recipes/configs/demo.yaml --dataset_name "$OUT/rft_data" --output_dir "$OUT/rft" \
  --kd_weight 0 --ce_weight 1 --overwrite_output_dir true
python recipes/train_ssb.py --config recipes/configs/demo.yaml --dataset_name "$OUT/data" --output_dir "$OUT/ssb" \
  --overwrite_output_dir true
python recipes/train_ssb.py --config recipes/configs/demo.yaml --dataset_name "$OUT/data" --output_dir "$OUT/sft" \
  --kd_weight 0 --ce_weight 1 --overwrite_output_dir true
stage "4/5 evaluate base vs RFT vs hard labels vs SSB on held-out questions"
python recipes/evaluate.py --config recipes/configs/demo_eval.yaml --output_dir "$OUT/eval" \
  --models "base=bundled:smollm2-135m-instruct" "rft=$OUT/rft" "hard-labels=$OUT/sft" "ssb=$OUT/ssb" \
  --exclude_questions_from "$OUT/data" "$OUT/rft_data" --generation_backend "$ENGINE" --overwrite
stage "5/5 plots"
python - "$OUT" <<'PY'
import json
import sys

from ssb_trl.plotting import plot_training_curves
out = sys.argv[1]
path = plot_training_curves({"rft": f"{out}/rft", "hard labels": f"{out}/sft", "ssb": f"{out}/ssb"}, f"{out}/training_curves.png",
                            keys=("loss", "kd_loss", "ce_loss", "top1_agreement"))
print(f"training curves: {path}\naccuracy chart: {out}/eval/accuracy.png")
gain = json.load(open(f"{out}/data/ssb_summary.json"))["hint_gain"]
print(f"hint check: hinted teacher {gain['hinted_accuracy']:.1%} vs alone {gain['unhinted_accuracy']:.1%} on "
      f"{gain['questions']} paired questions: {gain['gain_points']:+.1f} pts [{gain['gain_low']:+.1f}, "
      f"{gain['gain_high']:+.1f}] (SSB needs a clearly positive gain; see docs/experiment/RESULTS2.md)")
PY
stage "done"
cat "$OUT/eval/results.md"

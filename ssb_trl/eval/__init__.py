"""Evaluation: base vs trained models on held-out questions, pass@1 / mean@n with 95% intervals, answer lengths.

config     EvalConfig = QuestionSource + models + Sampling (greedy and sampled)
questions  the evaluation set, minus questions seen in training
models     --models entries -> specs (labels, PEFT adapters), checks, loading
stats      Wilson intervals, pass@1 / mean@n / pass@n, paired McNemar test
report     results.md, results.json, accuracy chart
saved      each finished model's results (output_dir/models/<label>.json): reuse on rerun, refuse other settings
run        generate, grade, aggregate, write
"""

from ssb_trl.eval.config import EvalConfig
from ssb_trl.eval.questions import EvaluationDataError, load_eval_questions
from ssb_trl.eval.report import render_markdown, write_report
from ssb_trl.eval.run import run_evaluation
from ssb_trl.eval.saved import EvaluationResultsConflict
from ssb_trl.eval.stats import Accuracy, wilson_interval

__all__ = [
    "Accuracy",
    "EvalConfig",
    "EvaluationDataError",
    "EvaluationResultsConflict",
    "load_eval_questions",
    "render_markdown",
    "run_evaluation",
    "wilson_interval",
    "write_report",
]

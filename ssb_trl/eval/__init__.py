"""Evaluation: base vs trained models on held-out questions, pass@1 / mean@n with 95% intervals, answer lengths.

config     EvalConfig = QuestionSource + models + Sampling (greedy and sampled)
questions  the evaluation set, minus questions seen in training
models     --models entries -> specs (labels, PEFT adapters), checks, loading
stats      Wilson intervals, pass@1 / mean@n / pass@n, paired McNemar test
report     results.md, results.json, accuracy chart
saved      each finished model's results (output_dir/models/<label>.json): reuse on rerun, refuse other settings
run        generate, grade, aggregate, write

The names load on first use (``ssb_trl.lazy``): importing one light module does not import the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "Accuracy": "ssb_trl.stats",
    "EvalConfig": "ssb_trl.eval.config",
    "EvaluationDataError": "ssb_trl.eval.questions",
    "EvaluationResultsConflict": "ssb_trl.eval.saved",
    "load_eval_questions": "ssb_trl.eval.questions",
    "render_markdown": "ssb_trl.eval.report",
    "run_evaluation": "ssb_trl.eval.run",
    "wilson_interval": "ssb_trl.stats",
    "write_report": "ssb_trl.eval.report",
}
__all__ = [  # the keys of _EXPORTS, spelled out for tools that read __all__ statically
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.eval.config import EvalConfig
    from ssb_trl.eval.questions import EvaluationDataError, load_eval_questions
    from ssb_trl.eval.report import render_markdown, write_report
    from ssb_trl.eval.run import run_evaluation
    from ssb_trl.eval.saved import EvaluationResultsConflict
    from ssb_trl.stats import Accuracy, wilson_interval

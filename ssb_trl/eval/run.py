"""Run an evaluation: generate and grade each model's answers on the evaluation set, then write the reports.

Models are prompted with exactly the student prompt used in training (`ssb_trl.tasks.prompts.student_messages`)
and graded with `ssb_trl.tasks.grading.grade` under the source's own `answer_fallbacks`, so evaluation and
data preparation cannot drift apart. Per-question records are kept so any figure can be audited.
"""

from __future__ import annotations

import gc
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

import ssb_trl
from ssb_trl.eval.config import EvalConfig
from ssb_trl.eval.model_specs import (
    ModelSpec,
    check_models_loadable,
    load_eval_model,
    model_dir_for_engine,
    parse_model_specs,
)
from ssb_trl.eval.questions import load_eval_questions
from ssb_trl.eval.report import write_report
from ssb_trl.eval.saved import SavedResults, run_settings
from ssb_trl.generation.base import GenerationBackend
from ssb_trl.generation.engine import make_backend
from ssb_trl.generation.sampling import derive_seed
from ssb_trl.stats import Accuracy, paired_pass1_comparison, summarize_records
from ssb_trl.storage import check_writable_dir
from ssb_trl.tasks.grading import extract_final_answer, grade
from ssb_trl.tasks.prompts import PROMPT_TEMPLATE_VERSION, student_messages
from ssb_trl.tasks.sources import QAExample

logger = logging.getLogger(__name__)


def score_completion(
    text: str, num_tokens: int, finished: bool, example: QAExample, fallbacks: bool = True
) -> dict[str, Any]:
    """Grade one completion and keep what an auditor needs: text, extracted answer, verdict, length, truncation."""
    return {
        "text": text,
        "extracted": extract_final_answer(text, fallbacks=fallbacks),
        "correct": bool(grade(text, example, fallbacks=fallbacks)),
        "num_tokens": int(num_tokens),
        "finished": bool(finished),
    }


def evaluate_model(backend: GenerationBackend, examples: Sequence[QAExample], config: EvalConfig) -> dict[str, Any]:
    """Generate and grade one model's completions (through `backend`) on `examples`; return its summary and
    per-question records.

    Sampling seeds derive from (seed, question id), so every model sees the same random stream per question
    (a paired comparison), and with the transformers backend a question's samples do not change with `limit` or
    batch size (with vLLM on CPU they depend on the whole call: see :mod:`ssb_trl.generation.vllm_engine`).
    """
    prompts = [student_messages(ex.question, system_prompt=config.system_prompt or None) for ex in examples]
    timings: dict[str, float] = {}
    greedy_out = sampled_out = None
    if config.greedy:
        start = time.perf_counter()
        greedy_out = backend.generate(prompts, config.greedy_sampling)
        timings["greedy_s"] = time.perf_counter() - start
    if config.sampling is not None:
        start = time.perf_counter()
        seeds = [derive_seed(config.seed, ex.id) for ex in examples]
        sampled_out = backend.generate(prompts, config.sampling, seed=seeds)
        timings["sampled_s"] = time.perf_counter() - start
    fallbacks = config.answer_fallbacks
    records = []
    for index, ex in enumerate(tqdm(examples, desc="Grading", unit="question")):
        record: dict[str, Any] = {
            "id": ex.id,
            "question": ex.question,
            "gold": ex.answer,
            "greedy": None,
            "samples": [],
        }
        if greedy_out is not None:
            c = greedy_out[index][0]
            record["greedy"] = score_completion(c.text, len(c.token_ids), c.finished, ex, fallbacks)
        if sampled_out is not None:
            record["samples"] = [
                score_completion(c.text, len(c.token_ids), c.finished, ex, fallbacks) for c in sampled_out[index]
            ]
        records.append(record)
    summary = summarize_records(records, config.num_samples)
    summary["timings"] = timings
    summary["records"] = records
    return summary


def open_backend(spec: ModelSpec, config: EvalConfig, scratch_dir: str) -> GenerationBackend:
    """The engine that generates for one model: transformers on the loaded (merged) model, or a vLLM engine on its
    directory (an adapter merged into its base first)."""
    device = None if config.device == "auto" else config.device
    if config.resolve_backend()[0] == "vllm":
        path, tokenizer = model_dir_for_engine(spec, scratch_dir, dtype=config.dtype)
        return make_backend(config, tokenizer=tokenizer, model_name_or_path=path, dtype=config.dtype)
    model, tokenizer = load_eval_model(spec, dtype=config.dtype, device=device)
    return make_backend(config, model=model, tokenizer=tokenizer, max_batch_size=config.batch_size)


def _environment() -> dict[str, str]:
    return {
        "ssb_trl": ssb_trl.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every model in `config.models` and write the reports; return the full report dict.

    Everything that can be checked cheaply (model entries, the evaluation set, its gold answers, model configs and
    context windows, a writable output_dir, earlier results there) is checked before the first model is loaded.
    Each model's results are saved to ``output_dir/models/<label>.json`` as soon as it finishes, and the reports
    are rewritten: a rerun with the same settings reuses finished models and evaluates only the others (see
    :mod:`ssb_trl.eval.saved`); results computed with other settings are refused unless ``overwrite``.
    """
    specs = parse_model_specs(config.models, config.adapter_base_model)
    examples, source = load_eval_questions(config)
    check_models_loadable(specs, max_new_tokens=config.max_new_tokens)
    check_writable_dir(config.output_dir, "output_dir")  # before the first model runs, not at its first write
    backend_kind, backend_reason = config.resolve_backend()
    settings = run_settings(config, examples, backend_kind)
    saved = SavedResults(config.output_dir, settings, overwrite=config.overwrite)
    reusable = saved.check(specs)
    report: dict[str, Any] = {
        "config": asdict(config),
        "benchmark": source,
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        "environment": _environment(),
        "settings": settings,
        "models": [],
        "comparisons": [],
    }
    report["generation_backend"] = backend_kind
    logger.info(
        "Evaluating %d model(s) on %d questions: %s; generation backend %s (%s)%s",
        len(specs),
        len(examples),
        source["description"],
        backend_kind,
        backend_reason,
        f"; {len(reusable)} finished earlier, reused" if reusable else "",
    )
    if len(reusable) < len(specs):
        config.check_backend_available()
    for spec in specs:
        if spec.label in reusable:
            entry = reusable[spec.label]
            result = {**entry["result"], "finished_at": entry.get("finished_at"), "reused": True}
            logger.info("reused %s (finished %s, %s)", spec.label, entry.get("finished_at"), saved.path(spec.label))
        else:
            result = _evaluate_spec(spec, examples, config)
            result["finished_at"] = saved.save(spec, result)
            result["reused"] = False
        report["models"].append(result)
        if config.greedy and len(report["models"]) > 1:
            report["comparisons"] = [paired_pass1_comparison(report["models"][0], m) for m in report["models"][1:]]
        summary = ", ".join(f"{k} {Accuracy(**m).fmt()}" for k, m in result["metrics"].items())
        logger.info("%s: %s", spec.label, summary)
        write_report(report, config.output_dir, plot=False)
    write_report(report, config.output_dir, plot=config.plot)
    return report


def _evaluate_spec(spec: ModelSpec, examples: Sequence[QAExample], config: EvalConfig) -> dict[str, Any]:
    """Load one model, generate and grade its answers, free it; its result as results.json lists it."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ssb-eval-") as scratch_dir:
        backend = open_backend(spec, config, scratch_dir)
        try:
            result = evaluate_model(backend, examples, config)
            result["generation_settings"] = backend.settings()
        finally:
            backend.close()
    del backend
    gc.collect()
    return {
        "label": spec.label,
        "model": spec.name_or_path,
        "adapter_base": spec.adapter_base,
        **result,
        "seconds": time.perf_counter() - started,
    }

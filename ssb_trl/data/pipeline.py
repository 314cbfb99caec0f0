"""SSB data preparation as one resumable, shardable job: which stage runs where, and the final dataset.

The stages themselves (METHOD.md steps 1-6) are in :mod:`ssb_trl.data.stages`; the files in
:mod:`ssb_trl.data.workdir`. Questions are cut into fixed shards of ``shard_size``; for each
shard the three expensive stages (student rollouts, teacher answers, soft labels) each persist their
result under ``<output_dir>/ssb_work/`` as soon as it exists, written to a temporary name and renamed
into place, so a crash never leaves a file that a rerun would take for finished work. A rerun skips
every stage already on disk. Every random draw is seeded from ``(seed, question id, stage, attempt)``,
so a resumed run, a run on N processes (shards are dealt round-robin to processes under
``accelerate launch``) and an uninterrupted run produce the same dataset. The settings of a run and one
digest per shard of its questions are recorded in ``ssb_work/settings.json``. A rerun with other settings
keeps the stages those settings do not feed (see :meth:`ssb_trl.data.workdir.WorkDir.claim`): new teacher
settings redo teacher answers and soft labels, new soft-label settings only the soft labels, a different
``num_questions`` (or a question file edited in place) only the shards whose questions changed; a change of what
the rollouts depend on is refused rather than mixed. The model and the question source are compared by what they
are, not how they were typed: the model by a fingerprint of its config and weights (a Hub model by its revision),
a local question file by its resolved path and content. The main process locks the folder (``ssb_work/LOCK``)
for the run, so a second run there is refused, naming the first. Settings errors (backend, model, tokenizer, its
end of turn vs its eos ids, K vs vocabulary, lengths vs context window) are caught by :func:`_preflight` before
any file is written.

When every shard is done, the main process concatenates the shard rows into one soft-label dataset
(:mod:`ssb_trl.contract` format) in ``output_dir``, writes ``ssb_summary.json`` and logs a summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, fields
from typing import Any

import datasets
import torch
from accelerate import PartialState
from tqdm.auto import tqdm
from transformers import AutoConfig, GenerationConfig

from ssb_trl.contract import (
    COMPLETION_MASK,
    SoftLabelMetadata,
    features,
    push_soft_label_dataset_to_hub,
    save_soft_label_dataset,
    tokenizer_fingerprint,
)
from ssb_trl.data.config import RUNTIME_ONLY_FIELDS, STAGES, PrepConfig
from ssb_trl.data.engine import make_backend
from ssb_trl.data.generation import GenerationBackend
from ssb_trl.data.prompts import PROMPT_TEMPLATE_VERSION
from ssb_trl.data.sources import QAExample, load_questions, source_identity
from ssb_trl.data.stages import build_rows, run_hint_check, run_rollouts, run_teacher
from ssb_trl.data.summary import SUMMARY_FILENAME, PrepSummary, backends_used, summarize
from ssb_trl.data.workdir import WorkDir, write_jsonl
from ssb_trl.models import (
    check_end_of_turn_token,
    check_model_available,
    load_model_and_tokenizer,
    load_tokenizer,
    model_eos_ids,
    model_fingerprint,
    module_fingerprint,
    resolve_model_path,
)
from ssb_trl.storage import check_writable_dir, write_json, write_text

logger = logging.getLogger(__name__)

__all__ = ["RUNTIME_ONLY_FIELDS", "NoPairsError", "PrepConfig", "PrepSummary", "prepare_ssb_data", "summarize"]


class NoPairsError(ValueError):
    """No question produced a training row; partial results stay on disk."""


# --------------------------------------------------------------------------------------------------
# Orchestration


def _process_shard(
    shard: int,
    questions: list[QAExample],
    work: WorkDir,
    backend: GenerationBackend,
    model: Any,
    tokenizer: Any,
    config: PrepConfig,
    eos_id: int,
    show_progress: bool,
) -> None:
    ids = [question.id for question in questions]
    rollouts = work.read_shard("rollouts", shard, ids)
    done = []
    if rollouts is None:
        rollouts = [{**record, "generated_by": backend.name} for record in run_rollouts(backend, questions, config)]
        write_jsonl(work.shard_path("rollouts", shard), rollouts)
        done.append("rollouts")
        for stage in STAGES[1:]:  # made from other rollouts (the rollouts file was deleted): redo them
            work.remove(stage, shard)
    teacher = work.read_shard("teacher", shard, ids)
    if teacher is None:
        teacher = [
            {**record, "generated_by": backend.name} for record in run_teacher(backend, questions, rollouts, config)
        ]
        write_jsonl(work.shard_path("teacher", shard), teacher)
        done.append("teacher answers")
        for stage in ("hint_check", "rows"):  # made from other teacher answers: redo them
            work.remove(stage, shard)
    if config.hint_check_samples and work.read_shard("hint_check", shard, ids) is None:
        checks = run_hint_check(backend, questions, teacher, config)
        write_jsonl(work.shard_path("hint_check", shard), [{**r, "generated_by": backend.name} for r in checks])
        done.append("hint check")
    if not work.shard_path("rows", shard).is_dir():
        work.save_rows(
            shard, build_rows(model, tokenizer, questions, rollouts, teacher, config, eos_id, show_progress)
        )
        done.append("soft labels")
    logger.info("Shard %d: generated %s (%s)", shard, ", ".join(done), backend.name)


def _shard_finished(work: WorkDir, shard: int, config: PrepConfig) -> bool:
    """Every stage of the shard is on disk (the hint check only when it is on)."""
    stages = [stage for stage in STAGES if stage != "hint_check" or config.hint_check_samples]
    return all(work.shard_path(stage, shard).exists() for stage in stages)


def _questions_digest(questions: list[QAExample]) -> str:
    """The digest runs before 0.2.x recorded (all questions at once), to resume their folders."""
    digest = hashlib.sha256()
    for question in questions:
        digest.update(json.dumps(question.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def _shard_digests(questions: list[QAExample], shard_size: int) -> list[str]:
    """One digest per shard of what its questions are. A reasoning-gym scorer records the size of the generated
    set, which grows with num_questions while the first questions stay the same: it is left out."""
    digests = []
    for start in range(0, len(questions), shard_size):
        digest = hashlib.sha256()
        for question in questions[start : start + shard_size]:
            scorer = {k: v for k, v in (question.scorer or {}).items() if k != "size"}
            record = {"id": question.id, "question": question.question, "answer": question.answer, "scorer": scorer}
            digest.update(json.dumps(record, sort_keys=True).encode())
        digests.append(digest.hexdigest())
    return digests


def _tokenizer_digest(tokenizer: Any) -> str:
    """What of a tokenizer the rollouts depend on: its vocabulary, bos/eos tokens and chat template."""
    record = {
        "vocabulary": tokenizer_fingerprint(tokenizer),
        "bos_eos": [tokenizer.bos_token, tokenizer.eos_token],
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _model_identity(config: PrepConfig, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The model and tokenizer by content (see :func:`ssb_trl.models.model_fingerprint`), recorded in settings.json
    so that a rerun on replaced weights is refused instead of mixing two models' shards."""
    try:
        identity = module_fingerprint(model) if model is not None else model_fingerprint(config.model_name_or_path)
    except Exception as exc:  # e.g. a Hub model outside the cache layout: fall back to comparing names
        logger.warning("Cannot fingerprint model %s (%s); runs compare it by name", config.model_name_or_path, exc)
        identity = {"kind": "name", "path": config.model_name_or_path, "sha256": None}
    return {**identity, "tokenizer_sha256": _tokenizer_digest(tokenizer)}


def _generation_eos_ids(config: PrepConfig, model: Any, model_config: Any, tokenizer: Any) -> list[int]:
    """The eos ids generation will stop at, read without loading weights."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None:
        try:
            generation_config = GenerationConfig.from_pretrained(resolve_model_path(config.model_name_or_path))
        except Exception:  # no generation_config.json: transformers derives it from the model config
            generation_config = GenerationConfig.from_model_config(model_config)
    return model_eos_ids(generation_config, tokenizer)


def _preflight(config: PrepConfig, model: Any, tokenizer: Any, main_process: bool = True) -> Any:
    """Check what can fail before any work starts or any file is written (so a corrected rerun is a new run, not
    a refused one): output_dir, generation backend, model, tokenizer (its end of turn is an eos id), K vs
    vocabulary, lengths vs context. Returns the tokenizer (loaded here when not given)."""
    if main_process:  # the others would race with the main process creating the run's files
        WorkDir(config.output_dir).check_usable()
    check_writable_dir(config.output_dir, "output_dir")
    config.check_backend_available()
    name = config.model_name_or_path
    if model is not None:
        model_config = model.config
    else:
        try:
            check_model_available(name)
            model_config = AutoConfig.from_pretrained(resolve_model_path(name))
        except Exception as exc:  # any loading failure: re-raised with what to fix
            raise ValueError(
                f"cannot load model {name!r} ({type(exc).__name__}: {exc}). Nothing was written; pass an existing "
                "local model directory, 'bundled:smollm2-135m-instruct', or a Hub id with network access (or in "
                "the local cache) as --model_name_or_path"
            ) from exc
    if tokenizer is None:
        tokenizer_name = config.tokenizer_name_or_path or name
        try:
            tokenizer = load_tokenizer(tokenizer_name)
        except Exception as exc:
            raise ValueError(
                f"cannot load the tokenizer {tokenizer_name!r} ({type(exc).__name__}: {exc}). Nothing was written; "
                "fix --tokenizer_name_or_path (or --model_name_or_path)"
            ) from exc
    check_end_of_turn_token(tokenizer, _generation_eos_ids(config, model, model_config, tokenizer), name)
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    vocab_size = getattr(text_config, "vocab_size", None) or len(tokenizer)
    if config.soft_label_top_k > vocab_size:
        raise ValueError(
            f"soft_label_top_k={config.soft_label_top_k} is larger than the vocabulary of {name!r} ({vocab_size} "
            f"tokens); K must be at most {vocab_size} (64 is the default). Nothing was written."
        )
    if config.soft_label_mode == "sampled" and config.soft_label_draws > vocab_size:
        raise ValueError(
            f"soft_label_draws={config.soft_label_draws} is larger than the vocabulary of {name!r} ({vocab_size} "
            f"tokens): the N draws are stored as N distinct entries per token, so N must be at most {vocab_size} "
            "(32 is the default). Nothing was written."
        )
    context = getattr(text_config, "max_position_embeddings", None)
    for flag, value in (
        ("rollout_max_new_tokens", config.rollout_max_new_tokens),
        ("teacher_max_new_tokens", config.teacher_max_new_tokens),
    ):
        if isinstance(context, int) and value > context:
            raise ValueError(
                f"{flag}={value} is more than {name!r} can hold: its context window is {context} positions, prompt "
                f"included. Pass --{flag} below {context}. Nothing was written."
            )
    return tokenizer


def _finalize(
    work: WorkDir, num_shards: int, config: PrepConfig, tokenizer: Any, vocab_size: int, run: dict[str, Any]
) -> tuple[PrepSummary, datasets.Dataset]:
    missing = [s for s in range(num_shards) if not work.shard_path("rows", s).is_dir()]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} have no rows on disk; a process failed. Rerun to finish them.")
    non_empty = [rows for rows in map(work.load_rows, range(num_shards)) if rows is not None]
    if non_empty:
        dataset = datasets.concatenate_datasets(non_empty)
    else:
        row_features = features(config.logprob_dtype)
        dataset = datasets.Dataset.from_dict({name: [] for name in row_features}, features=row_features)
    summary = summarize(work, num_shards, config, vocab_size)
    for name, value in run.items():
        setattr(summary, name, value)
    if len(dataset) == 0:
        logger.warning(
            "SSB data preparation kept no teacher answer; summary of %s:\n%s", work.output_dir, summary.table()
        )
        figures = (
            f"{summary.questions} questions, rollout accuracy {summary.rollout_accuracy:.1%} "
            f"({summary.rollouts_correct}/{summary.rollouts}), {summary.rollouts_without_answer} rollouts without an "
            f"answer, {summary.pairs} pairs, teacher yield {summary.teacher_kept}/{summary.teacher_questions} "
            "(questions asked with a kept answer)"
        )
        more_questions = (
            f"rerun into the same --output_dir with a larger --num_questions (now {summary.questions}): the finished "
            "shards are kept and only the new questions are sampled"
        )
        if summary.teacher_questions == 0:
            raise NoPairsError(
                f"no question yielded a pair (a correct and an incorrect rollout): {figures}. To fix it, {more_questions}"
                ". Settings that change the rollouts themselves (--num_rollouts, a higher --rollout_temperature, "
                "another model or question set: easier if accuracy is ~0%, harder if ~100%) need a new --output_dir. "
                f"Rollouts are kept in {work.root}."
            )
        raise NoPairsError(
            f"the teacher never produced a verified-correct, finished answer: {figures} "
            f"({summary.teacher_attempts} attempts). To fix it, rerun into the same --output_dir with more "
            "--teacher_retries or a larger --teacher_max_new_tokens (the rollouts are reused; only the teacher answers "
            f"are redone), or {more_questions}. Work so far is kept in {work.root}."
        )
    recorded = work.read_settings() or {}
    metadata = SoftLabelMetadata(
        teacher_model=config.model_name_or_path,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=config.soft_label_entries,
        temperature=config.soft_label_temperature,
        prompt_template_version=PROMPT_TEMPLATE_VERSION,
        source={
            **config.settings(),
            "seed": config.seed,
            "rollout_sampling": asdict(config.rollout_sampling),
            "teacher_sampling": asdict(config.teacher_sampling),
            "generation_backends": sorted(backends_used(work, num_shards)),
            "model_fingerprint": recorded.get("model"),
            "source_fingerprint": recorded.get("source"),
            "teacher_hint": config.hint_identity,
            "teacher_hint_version": config.hint_format.version,
            "hint_gain": summary.hint_gain,
            "kept_answers_with_wrong_arithmetic_step": [summary.kept_with_wrong_step, summary.kept_steps_checked],
        },
        logprob_dtype=config.logprob_dtype,
        soft_label_mode=config.soft_label_mode,
        soft_label_draws=config.soft_label_draws if config.soft_label_mode == "sampled" else None,
    )
    staging = work.root / "final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    save_soft_label_dataset(dataset, str(staging), metadata)
    work.publish(staging)
    data_files = list(work.output_dir.glob("data-*.arrow"))
    summary.answer_tokens = sum(sum(mask) for mask in dataset[COMPLETION_MASK])
    summary.dataset_bytes = sum(path.stat().st_size for path in data_files)
    summary.bytes_per_answer_token = summary.dataset_bytes / max(summary.answer_tokens, 1)
    write_json(work.output_dir / SUMMARY_FILENAME, summary.to_dict())
    write_text(work.done_path, "done\n")
    if config.push_to_hub:
        logger.info("Pushing the dataset to the Hub as %s", config.hub_dataset_id)
        push_soft_label_dataset_to_hub(dataset, config.hub_dataset_id, metadata, private=config.hub_private)
    return summary, dataset


def _distributed_state(config: PrepConfig) -> Any:
    """Accelerate's process state; on CPU it must be asked for explicitly, or each process runs alone."""
    use_cpu = (
        config.device == "cpu"
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    state = PartialState(cpu=use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"launched as {launched} processes but accelerate set up {state.num_processes}; the processes would "
            "duplicate each other's work. On CPU use an accelerate config with distributed_type MULTI_GPU and "
            "use_cpu: true (as tests/test_train_recipe.py does)."
        )
    return state


def prepare_ssb_data(
    config: PrepConfig,
    model: Any = None,
    tokenizer: Any = None,
    questions: list[QAExample] | None = None,
    show_progress: bool = True,
    backend: GenerationBackend | None = None,
) -> PrepSummary:
    """Run (or resume) data preparation; returns the summary (on every process; counts are global).

    ``model``/``tokenizer``/``questions`` may be passed in (e.g. from a notebook); otherwise they come
    from ``config``. So may a generation ``backend`` (to reuse a started vLLM engine; it is then not closed). Under ``accelerate launch`` the shards are dealt round-robin to the processes and
    the main process writes the merged dataset.
    """
    state = _distributed_state(config)
    if questions is None:
        questions = load_questions(config)
    tokenizer = _preflight(config, model, tokenizer, main_process=state.is_main_process)
    work = WorkDir(config.output_dir)
    if not state.is_main_process:  # the processes of one launch are one run: its main process holds the lock
        return _prepare(config, state, work, model, tokenizer, questions, show_progress, backend)
    work.acquire_lock()
    try:
        return _prepare(config, state, work, model, tokenizer, questions, show_progress, backend)
    finally:
        work.release_lock()


def _prepare(
    config: PrepConfig,
    state: Any,
    work: WorkDir,
    model: Any,
    tokenizer: Any,
    questions: list[QAExample],
    show_progress: bool,
    backend: GenerationBackend | None,
) -> PrepSummary:
    """The run itself, once the settings are checked and (on the main process) the folder is locked."""
    settings = {
        "config": config.fingerprint(),
        "questions": {"count": len(questions), "shard_sha256": _shard_digests(questions, config.shard_size)},
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
    }
    shard_ids = [
        [q.id for q in questions[i : i + config.shard_size]] for i in range(0, len(questions), config.shard_size)
    ]
    if state.is_main_process:
        resuming = work.read_settings() is not None
        settings.update(model=_model_identity(config, model, tokenizer), source=source_identity(config))
        notes = work.claim(
            settings,
            defaults={f.name: f.default for f in fields(PrepConfig)},
            legacy_questions_sha256=_questions_digest(questions),
        )
        work.check_shards(shard_ids)
        # A finished run's summary and marker are rewritten at the end; drop them so no process reads them early.
        work.done_path.unlink(missing_ok=True)
        (work.output_dir / SUMMARY_FILENAME).unlink(missing_ok=True)
        logger.info("%s SSB data preparation in %s", "Resuming" if resuming else "Starting", config.output_dir)
        for note in notes:
            logger.warning("%s: %s", config.output_dir, note)
    state.wait_for_everyone()
    if not state.is_main_process:
        work.check_claimed(settings)
    num_shards = (len(questions) + config.shard_size - 1) // config.shard_size
    reused = [s for s in range(num_shards) if _shard_finished(work, s, config)]
    my_shards = [s for s in range(num_shards) if s % state.num_processes == state.process_index]
    todo = [s for s in my_shards if s not in reused]
    backend_kind, backend_reason = config.resolve_backend()
    if todo and backend_kind == "vllm" and state.num_processes > 1:
        raise ValueError(
            f"a local vLLM engine per process ({state.num_processes} processes) is not supported: for many GPUs "
            "start one server (`vllm serve MODEL --data-parallel-size N`) and pass --vllm_server_url; see the README"
        )
    if todo and model is None:
        device = config.device or (str(state.device) if state.num_processes > 1 else None)
        model, tokenizer = load_model_and_tokenizer(
            config.model_name_or_path,
            dtype=config.dtype,
            device=device,
            tokenizer_name_or_path=config.tokenizer_name_or_path,
        )
    inner_progress = show_progress and state.is_local_main_process
    if todo:
        if state.num_processes > 1 and model.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
        own_backend = backend is None
        if backend is None:
            backend = make_backend(
                config,
                model=model,
                tokenizer=tokenizer,
                model_name_or_path=config.model_name_or_path,
                dtype=config.dtype,
                max_batch_size=config.generation_batch_size,
                max_batch_tokens=config.generation_max_batch_tokens,
                show_progress=inner_progress,
            )
        eos_id = backend.eos_ids[0] if getattr(backend, "eos_ids", None) else tokenizer.eos_token_id
        logger.info(
            "Process %d/%d: %d of its %d shards to do (%d questions in %d shards in all; generation: %s, %s)",
            state.process_index,
            state.num_processes,
            len(todo),
            len(my_shards),
            len(questions),
            num_shards,
            backend.name,
            backend_reason,
        )
        bar = tqdm(todo, desc=f"Shards (process {state.process_index})", unit="shard", disable=not show_progress)
        try:
            for shard in bar:
                chunk = questions[shard * config.shard_size : (shard + 1) * config.shard_size]
                _process_shard(shard, chunk, work, backend, model, tokenizer, config, eos_id, inner_progress)
        finally:
            if own_backend:
                backend.close()
    state.wait_for_everyone()
    vocab_size = int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))
    error: Exception | None = None
    if state.is_main_process:
        try:
            run = {
                "generation_backend": backend_kind if len(reused) < num_shards else "",
                "shards_generated": [s for s in range(num_shards) if s not in reused],
                "shards_reused": reused,
                "generation_settings": {**backend.settings(), "shard_size": config.shard_size} if todo else {},
            }
            summary, _ = _finalize(work, num_shards, config, tokenizer, vocab_size, run)
            logger.info("SSB data preparation finished; dataset in %s\n%s", config.output_dir, summary.table())
            if summary.hint_warning():
                logger.warning("%s\n%s\n%s", "!" * 100, summary.hint_warning(), "!" * 100)
        except Exception as exc:  # re-raised below, after the other processes have been released
            error = exc
    state.wait_for_everyone()
    if error is not None:
        raise error
    summary_path = work.output_dir / SUMMARY_FILENAME
    if not summary_path.is_file():
        raise RuntimeError("the main process failed to write the dataset; see its error above")
    data = json.loads(summary_path.read_text())
    data.pop("rollout_accuracy", None)
    return PrepSummary(**data)

"""SSB data preparation: rollouts -> grading -> pairing -> hinted teacher answer -> soft labels -> rows.

METHOD.md steps 1-6 as one resumable job. Questions are cut into fixed shards of ``shard_size``; for each
shard the three expensive stages (student rollouts, teacher answers, soft labels) each persist their
result under ``<output_dir>/ssb_work/`` as soon as it exists, written to a temporary name and renamed
into place, so a crash never leaves a file that a rerun would take for finished work. A rerun skips
every stage already on disk. Every random draw is seeded from ``(seed, question id, stage, attempt)``,
so a resumed run, a run on N processes (shards are dealt round-robin to processes under
``accelerate launch``) and an uninterrupted run produce the same dataset. The settings of a run are
recorded in ``ssb_work/settings.json``; an output directory holding a run with other settings is
refused rather than mixed.

When every shard is done, the main process concatenates the shard rows into one soft-label dataset
(``ssb_trl.soft_labels`` format) in ``output_dir``, writes ``ssb_summary.json`` and logs a summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ssb_trl.generation import GenerationBackend, derive_seed, make_backend
from ssb_trl.grading import extract_final_answer, grade, normalize_answer
from ssb_trl.models import load_model_and_tokenizer, load_tokenizer
from ssb_trl.prep_config import DEMO_TASK_CONFIG, RUNTIME_ONLY_FIELDS, PrepConfig
from ssb_trl.prompts import (
    PROMPT_TEMPLATE_VERSION,
    chat_prompt_ids,
    student_messages,
    teacher_messages,
)
from ssb_trl.soft_labels import (
    SoftLabelMetadata,
    extract_topk_soft_labels,
    push_soft_label_dataset_to_hub,
    save_soft_label_dataset,
    tokenizer_fingerprint,
)
from ssb_trl.sources import QAExample, load_questions
from ssb_trl.workdir import WORK_DIRNAME, WorkDir, read_jsonl, write_atomic, write_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_TASK_CONFIG",
    "RUNTIME_ONLY_FIELDS",
    "WORK_DIRNAME",
    "NoPairsError",
    "PrepConfig",
    "PrepSummary",
    "WorkDir",
    "build_rows",
    "choose_pair",
    "prepare_ssb_data",
    "run_rollouts",
    "run_teacher",
]

SUMMARY_FILENAME = "ssb_summary.json"
EMPTY_MARKER = "EMPTY"


class NoPairsError(ValueError):
    """No question produced a training row; partial results stay on disk."""


@dataclass
class PrepSummary:
    """What a run produced; written to ``ssb_summary.json`` next to the dataset."""

    questions: int = 0
    rollouts: int = 0
    rollouts_correct: int = 0
    rollouts_without_answer: int = 0
    rollouts_truncated: int = 0
    pairs: int = 0
    teacher_attempts: int = 0
    teacher_kept: int = 0
    answer_tokens: int = 0
    dataset_bytes: int = 0
    bytes_per_answer_token: float = 0.0
    full_vocab_float32_bytes_per_token: int = 0
    output_dir: str = ""

    @property
    def rollout_accuracy(self) -> float:
        return self.rollouts_correct / self.rollouts if self.rollouts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rollout_accuracy": self.rollout_accuracy}

    def table(self) -> str:
        rows = [
            ("questions", f"{self.questions}"),
            ("rollouts", f"{self.rollouts}"),
            ("rollout accuracy", f"{self.rollout_accuracy:.1%} ({self.rollouts_correct}/{self.rollouts})"),
            ("rollouts without an answer / cut short", f"{self.rollouts_without_answer} / {self.rollouts_truncated}"),
            ("pairs (questions with a right and a wrong rollout)", f"{self.pairs}"),
            ("teacher answers kept / attempts", f"{self.teacher_kept} / {self.teacher_attempts}"),
            ("answer tokens", f"{self.answer_tokens}"),
            (
                "bytes per answer token on disk",
                f"{self.bytes_per_answer_token:.0f} (full-vocab float32: {self.full_vocab_float32_bytes_per_token})",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


# --------------------------------------------------------------------------------------------------
# Stages


def run_rollouts(
    backend: GenerationBackend, questions: list[QAExample], config: PrepConfig, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Step 1-2: ``num_rollouts`` student samples per question, each graded."""
    prompts = [student_messages(q.question, config.system_prompt) for q in questions]
    seeds = [derive_seed(config.seed, q.id, "rollouts") for q in questions]
    completions = backend.generate(
        prompts,
        num_samples=config.num_rollouts,
        temperature=config.rollout_temperature,
        top_k=config.rollout_top_k,
        top_p=config.rollout_top_p,
        max_new_tokens=config.rollout_max_new_tokens,
        seed=seeds,
    )
    records = []
    for question, samples in zip(questions, completions):
        rollouts = []
        for sample in samples:
            answer = extract_final_answer(sample.text, fallbacks=config.answer_fallbacks)
            correct = answer is not None and grade(sample.text, question, fallbacks=config.answer_fallbacks)
            rollouts.append(
                {
                    "text": sample.text,
                    "num_tokens": len(sample.token_ids),
                    "finished": sample.finished,
                    "answer": answer,
                    "correct": correct,
                }
            )
        records.append({"id": question.id, "rollouts": rollouts})
    return records


def choose_pair(rollouts: list[dict[str, Any]], rng: random.Random) -> tuple[int, int] | None:
    """Step 3: (correct index, incorrect index), or None without both kinds.

    The incorrect rollout carries the most common wrong answer when that answer occurs more than once
    (ties: the answer seen first), else it is a random wrong one. Rollouts with no extractable answer
    are never the incorrect example.
    """
    correct = [i for i, r in enumerate(rollouts) if r["correct"]]
    wrong = [i for i, r in enumerate(rollouts) if not r["correct"] and r["answer"] is not None]
    if not correct or not wrong:
        return None
    correct_index = rng.choice(correct)
    counts = Counter(normalize_answer(rollouts[i]["answer"]) for i in wrong)
    top_answer, top_count = max(counts.items(), key=lambda item: item[1])  # max keeps the first of equal counts
    if top_count > 1:
        incorrect_index = next(i for i in wrong if normalize_answer(rollouts[i]["answer"]) == top_answer)
    else:
        incorrect_index = rng.choice(wrong)
    return correct_index, incorrect_index


def _teacher_prompt(question: QAExample, rollouts: list[dict[str, Any]], pair: dict[str, Any], config: PrepConfig):
    return teacher_messages(
        question.question,
        rollouts[pair["correct_index"]]["text"],
        rollouts[pair["incorrect_index"]]["text"],
        config.system_prompt,
    )


def run_teacher(
    backend: GenerationBackend,
    questions: list[QAExample],
    rollout_records: list[dict[str, Any]],
    config: PrepConfig,
) -> list[dict[str, Any]]:
    """Steps 3-5: pair each question, ask the hinted teacher, keep the first verified-correct answer.

    An attempt counts only if it finished its turn (a cut answer would teach the student not to stop)
    and grades correct. There are ``1 + teacher_retries`` attempts per pair: all sampled at once
    (``teacher_attempts_in_parallel``, best on batch hardware) or one round at a time for the pairs
    still without a kept answer (least compute).
    """
    records: list[dict[str, Any]] = []
    pending: list[int] = []
    for index, (question, record) in enumerate(zip(questions, rollout_records)):
        pair = choose_pair(record["rollouts"], random.Random(derive_seed(config.seed, question.id, "pair")))
        entry: dict[str, Any] = {"id": question.id, "pair": None, "attempts": [], "kept_attempt": None}
        if pair is not None:
            correct_index, incorrect_index = pair
            entry["pair"] = {
                "correct_index": correct_index,
                "incorrect_index": incorrect_index,
                "incorrect_answer": record["rollouts"][incorrect_index]["answer"],
            }
            pending.append(index)
        records.append(entry)
    attempts = config.teacher_retries + 1
    rounds = [(0, attempts)] if config.teacher_attempts_in_parallel else [(a, 1) for a in range(attempts)]
    for first_attempt, num_samples in rounds:
        if not pending:
            break
        prompts = [
            _teacher_prompt(questions[i], rollout_records[i]["rollouts"], records[i]["pair"], config) for i in pending
        ]
        seeds = [derive_seed(config.seed, questions[i].id, "teacher", first_attempt) for i in pending]
        outputs = backend.generate(
            prompts,
            num_samples=num_samples,
            temperature=config.teacher_temperature,
            top_k=config.teacher_top_k,
            top_p=config.teacher_top_p,
            max_new_tokens=config.teacher_max_new_tokens,
            seed=seeds,
        )
        for i, samples in zip(pending, outputs):
            for sample in samples:
                correct = sample.finished and grade(sample.text, questions[i], fallbacks=config.answer_fallbacks)
                if correct and records[i]["kept_attempt"] is None:
                    records[i]["kept_attempt"] = len(records[i]["attempts"])
                records[i]["attempts"].append(
                    {
                        "text": sample.text,
                        "token_ids": sample.token_ids,
                        "finished": sample.finished,
                        "answer": extract_final_answer(sample.text, fallbacks=config.answer_fallbacks),
                        "correct": correct,
                    }
                )
        pending = [i for i in pending if records[i]["kept_attempt"] is None]
    return records


def row_features(logprob_dtype: str) -> datasets.Features:
    """Arrow schema of the training rows (DESIGN.md's soft-label dataset, plus id and gold answer)."""
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "prompt": datasets.List(message),
            "completion": datasets.List(message),
            "input_ids": datasets.List(datasets.Value("int32")),
            "completion_mask": datasets.List(datasets.Value("int8")),
            "teacher_topk_ids": datasets.List(datasets.List(datasets.Value("int32"))),
            "teacher_topk_logprobs": datasets.List(datasets.List(datasets.Value(logprob_dtype))),
        }
    )


def build_rows(
    model: Any,
    tokenizer: Any,
    questions: list[QAExample],
    rollout_records: list[dict[str, Any]],
    teacher_records: list[dict[str, Any]],
    config: PrepConfig,
    eos_id: int,
    show_progress: bool = True,
) -> datasets.Dataset:
    """Step 6: teacher-forced soft labels on [hinted prompt + answer]; student rows on [student prompt + answer]."""
    kept = [(q, r, t) for q, r, t in zip(questions, rollout_records, teacher_records) if t["kept_attempt"] is not None]
    sequences, starts, answers = [], [], []
    for question, rollout_record, teacher_record in kept:
        attempt = teacher_record["attempts"][teacher_record["kept_attempt"]]
        answer_ids = list(attempt["token_ids"])
        if not answer_ids or answer_ids[-1] != eos_id:
            answer_ids.append(eos_id)  # the student must learn to end its turn
        prompt_ids = chat_prompt_ids(
            tokenizer, _teacher_prompt(question, rollout_record["rollouts"], teacher_record["pair"], config)
        )
        sequences.append(prompt_ids + answer_ids)
        starts.append(len(prompt_ids))
        answers.append((attempt["text"], answer_ids))
    columns: dict[str, list[Any]] = {name: [] for name in row_features(config.logprob_dtype)}
    if kept:
        labels = extract_topk_soft_labels(
            model,
            sequences,
            starts,
            top_k=config.soft_label_top_k,
            temperature=config.soft_label_temperature,
            batch_size=config.soft_label_batch_size,
            logprob_dtype=config.logprob_dtype,
            show_progress=show_progress,
        )
        for (question, _, _), (text, answer_ids), (top_ids, top_logprobs) in zip(kept, answers, labels):
            prompt = student_messages(question.question, config.system_prompt)
            prompt_ids = chat_prompt_ids(tokenizer, prompt)
            columns["id"].append(question.id)
            columns["answer"].append(question.answer)
            columns["prompt"].append(prompt)
            columns["completion"].append([{"role": "assistant", "content": text}])
            columns["input_ids"].append(prompt_ids + answer_ids)
            columns["completion_mask"].append([0] * len(prompt_ids) + [1] * len(answer_ids))
            columns["teacher_topk_ids"].append(top_ids.tolist())
            columns["teacher_topk_logprobs"].append(top_logprobs.tolist())
    return datasets.Dataset.from_dict(columns, features=row_features(config.logprob_dtype))


# --------------------------------------------------------------------------------------------------
# Orchestration


def _save_dataset_atomic(dataset: datasets.Dataset, path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if len(dataset):
            dataset.save_to_disk(str(tmp))
        else:  # datasets cannot load back an empty saved dataset; a marker says "done, no rows"
            (tmp / EMPTY_MARKER).write_text("")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    rollout_path = work.shard_path("rollouts", shard)
    rollouts = read_jsonl(rollout_path)
    if rollouts is None:
        rollouts = run_rollouts(backend, questions, config, show_progress)
        write_jsonl(rollout_path, rollouts)
    teacher_path = work.shard_path("teacher", shard)
    teacher = read_jsonl(teacher_path)
    if teacher is None:
        teacher = run_teacher(backend, questions, rollouts, config)
        write_jsonl(teacher_path, teacher)
    rows_path = work.shard_path("rows", shard)
    if not rows_path.is_dir():
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        rows = build_rows(model, tokenizer, questions, rollouts, teacher, config, eos_id, show_progress)
        _save_dataset_atomic(rows, rows_path)


def _questions_digest(questions: list[QAExample]) -> str:
    digest = hashlib.sha256()
    for question in questions:
        digest.update(json.dumps(question.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def _load_config_questions(config: PrepConfig) -> list[QAExample]:
    return load_questions(
        config.source,
        config_name=config.source_config_name,
        split=config.source_split,
        question_field=config.question_field,
        answer_field=config.answer_field,
        id_field=config.id_field,
        task_config=config.task_config if isinstance(config.task_config, dict) else None,
        seed=config.seed,
        num_questions=config.num_questions,
    )


def summarize(work: WorkDir, num_shards: int, config: PrepConfig, vocab_size: int) -> PrepSummary:
    """Count everything from the shard files (so it covers every process's work)."""
    summary = PrepSummary(output_dir=str(work.output_dir), full_vocab_float32_bytes_per_token=4 * vocab_size)
    for shard in range(num_shards):
        for record in read_jsonl(work.shard_path("rollouts", shard)) or []:
            summary.questions += 1
            for rollout in record["rollouts"]:
                summary.rollouts += 1
                summary.rollouts_correct += int(rollout["correct"])
                summary.rollouts_without_answer += int(rollout["answer"] is None)
                summary.rollouts_truncated += int(not rollout["finished"])
        for record in read_jsonl(work.shard_path("teacher", shard)) or []:
            summary.pairs += int(record["pair"] is not None)
            summary.teacher_attempts += len(record["attempts"])
            summary.teacher_kept += int(record["kept_attempt"] is not None)
    return summary


def _finalize(
    work: WorkDir, num_shards: int, config: PrepConfig, tokenizer: Any, vocab_size: int
) -> tuple[PrepSummary, datasets.Dataset]:
    missing = [s for s in range(num_shards) if not work.shard_path("rows", s).is_dir()]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} have no rows on disk; a process failed. Rerun to finish them.")
    shard_dirs = [work.shard_path("rows", s) for s in range(num_shards)]
    non_empty = [datasets.load_from_disk(str(path)) for path in shard_dirs if not (path / EMPTY_MARKER).exists()]
    features = row_features(config.logprob_dtype)
    if non_empty:
        dataset = datasets.concatenate_datasets(non_empty)
    else:
        dataset = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    summary = summarize(work, num_shards, config, vocab_size)
    if len(dataset) == 0:
        if summary.pairs == 0:
            raise NoPairsError(
                f"no question yielded a pair (a correct and an incorrect rollout): {summary.questions} questions, "
                f"rollout accuracy {summary.rollout_accuracy:.1%}, {summary.rollouts_without_answer} rollouts without "
                "an answer. Try more samples (--num_rollouts), a higher --rollout_temperature, more questions, or a "
                "question set better matched to the model (easier if accuracy is ~0%, harder if ~100%). "
                f"Rollouts are kept in {work.root}."
            )
        raise NoPairsError(
            f"{summary.pairs} questions had a pair but the teacher never produced a verified-correct, finished answer "
            f"({summary.teacher_attempts} attempts). Try more --teacher_retries, a larger --teacher_max_new_tokens, or "
            f"more questions. Work so far is kept in {work.root}."
        )
    metadata = SoftLabelMetadata(
        teacher_model=config.model_name_or_path,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=config.soft_label_top_k,
        temperature=config.soft_label_temperature,
        prompt_template_version=PROMPT_TEMPLATE_VERSION,
        source={
            "source": config.source,
            "config_name": config.source_config_name,
            "split": config.source_split,
            "task_config": config.task_config,
            "num_questions": config.num_questions,
            "seed": config.seed,
            "num_rollouts": config.num_rollouts,
            "rollout_sampling": {
                "temperature": config.rollout_temperature,
                "top_k": config.rollout_top_k,
                "top_p": config.rollout_top_p,
                "max_new_tokens": config.rollout_max_new_tokens,
            },
            "teacher_sampling": {
                "temperature": config.teacher_temperature,
                "top_k": config.teacher_top_k,
                "top_p": config.teacher_top_p,
                "max_new_tokens": config.teacher_max_new_tokens,
                "retries": config.teacher_retries,
            },
            "generation_backend": config.generation_backend,
        },
        logprob_dtype=config.logprob_dtype,
    )
    staging = work.root / "final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    save_soft_label_dataset(dataset, str(staging), metadata)
    _publish(staging, work.output_dir)
    data_files = list(work.output_dir.glob("data-*.arrow"))
    summary.answer_tokens = sum(sum(mask) for mask in dataset["completion_mask"])
    summary.dataset_bytes = sum(path.stat().st_size for path in data_files)
    summary.bytes_per_answer_token = summary.dataset_bytes / max(summary.answer_tokens, 1)
    write_atomic(work.output_dir / SUMMARY_FILENAME, json.dumps(summary.to_dict(), indent=2))
    write_atomic(work.done_path, "done\n")
    if config.push_to_hub:
        logger.info("Pushing the dataset to the Hub as %s", config.hub_dataset_id)
        push_soft_label_dataset_to_hub(dataset, config.hub_dataset_id, metadata, private=config.hub_private)
    return summary, dataset


def _publish(staging: Path, output_dir: Path) -> None:
    """Move a saved dataset from ``staging`` into ``output_dir``; the files loaders look for go last."""
    for old in [*output_dir.glob("data-*.arrow"), *(output_dir / n for n in ("state.json", "dataset_info.json"))]:
        old.unlink(missing_ok=True)
    last = ("state.json", "dataset_info.json")
    files = sorted(
        staging.iterdir(), key=lambda path: (path.name in last, last.index(path.name) if path.name in last else 0)
    )
    for path in files:
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def _distributed_state(config: PrepConfig) -> Any:
    """Accelerate's process state; on CPU it must be asked for explicitly, or each process runs alone."""
    from accelerate import PartialState

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
            "use_cpu: true (see CPU_DISTRIBUTED.md)."
        )
    return state


def prepare_ssb_data(
    config: PrepConfig,
    model: Any = None,
    tokenizer: Any = None,
    questions: list[QAExample] | None = None,
    show_progress: bool = True,
) -> PrepSummary:
    """Run (or resume) data preparation; returns the summary (on every process; counts are global).

    ``model``/``tokenizer``/``questions`` may be passed in (e.g. from a notebook); otherwise they come
    from ``config``. Under ``accelerate launch`` the shards are dealt round-robin to the processes and
    the main process writes the merged dataset.
    """
    state = _distributed_state(config)
    if questions is None:
        questions = _load_config_questions(config)
    work = WorkDir(config.output_dir)
    settings = {
        "config": config.fingerprint(),
        "questions_sha256": _questions_digest(questions),
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
    }
    if state.is_main_process:
        resuming = work.claim(settings)
        # A finished run's summary and marker are rewritten at the end; drop them so no process reads them early.
        work.done_path.unlink(missing_ok=True)
        (work.output_dir / SUMMARY_FILENAME).unlink(missing_ok=True)
        logger.info("%s SSB data preparation in %s", "Resuming" if resuming else "Starting", config.output_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        work.claim(settings)
    num_shards = (len(questions) + config.shard_size - 1) // config.shard_size
    my_shards = [s for s in range(num_shards) if s % state.num_processes == state.process_index]
    todo = [s for s in my_shards if not work.shard_path("rows", s).is_dir()]
    if todo and model is None:
        device = config.device or (str(state.device) if state.num_processes > 1 else None)
        model, tokenizer = load_model_and_tokenizer(
            config.model_name_or_path,
            dtype=config.dtype,
            device=device,
            tokenizer_name_or_path=config.tokenizer_name_or_path,
        )
    elif tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_name_or_path or config.model_name_or_path)
    inner_progress = show_progress and state.is_local_main_process
    if todo:
        if state.num_processes > 1 and model.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
        backend = make_backend(
            config.generation_backend,
            model=model,
            tokenizer=tokenizer,
            model_name_or_path=config.model_name_or_path,
            max_batch_size=config.generation_batch_size,
            max_batch_tokens=config.generation_max_batch_tokens,
            show_progress=inner_progress,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        )
        eos_id = backend.eos_ids[0] if getattr(backend, "eos_ids", None) else tokenizer.eos_token_id
        logger.info(
            "Process %d/%d: %d of its %d shards to do (%d questions in %d shards in all)",
            state.process_index,
            state.num_processes,
            len(todo),
            len(my_shards),
            len(questions),
            num_shards,
        )
        bar = tqdm(todo, desc=f"Shards (process {state.process_index})", unit="shard", disable=not show_progress)
        for shard in bar:
            chunk = questions[shard * config.shard_size : (shard + 1) * config.shard_size]
            _process_shard(shard, chunk, work, backend, model, tokenizer, config, eos_id, inner_progress)
    state.wait_for_everyone()
    vocab_size = int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))
    error: Exception | None = None
    if state.is_main_process:
        try:
            summary, _ = _finalize(work, num_shards, config, tokenizer, vocab_size)
            logger.info("SSB data preparation finished; dataset in %s\n%s", config.output_dir, summary.table())
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

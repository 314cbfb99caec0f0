"""SSB data preparation as a job on the run engine (:mod:`ssb_trl.jobs`): question/answer pairs -> soft labels.

For each shard of questions: the student's rollouts, the hinted teacher's answers, the hint check (the same
questions unhinted), then the soft-label rows: the teacher's soft labels on [hinted prompt + kept answer], stored
on [student prompt + kept answer] (docs/METHOD.md steps 1-6; the stages are :mod:`ssb_trl.prepare.stages`). The
engine persists every stage per shard, resumes, deals shards to processes and publishes the dataset; a rerun with
other settings keeps the stages they do not feed (:data:`ssb_trl.prepare.config.RESUME_TABLE`). Settings errors
(backend, model, tokenizer, its end of turn vs its eos ids, K vs vocabulary, lengths vs context window) are caught
in :meth:`PrepareJob.preflight`, before any file is written.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from typing import Any

import datasets
from transformers import GenerationConfig

from ssb_trl.generation.base import GenerationBackend
from ssb_trl.generation.sampling import derive_seed
from ssb_trl.jobs.identity import local_input_identity, model_identity
from ssb_trl.jobs.resume import ResumeTable
from ssb_trl.jobs.rows import TextToLabel, soft_label_rows, with_end_of_turn
from ssb_trl.jobs.runner import Job, RunContext, RunReport, run_job
from ssb_trl.jobs.settings import ROWS_STAGE
from ssb_trl.jobs.workdir import WorkDir, read_jsonl
from ssb_trl.models import (
    check_end_of_turn_token,
    load_model_and_tokenizer,
    model_eos_ids,
    resolve_model_path,
)
from ssb_trl.prepare.config import RESUME_TABLE, STAGES, PrepConfig
from ssb_trl.prepare.stages import choose_hint, run_hint_check, run_rollouts, run_teacher, teacher_prompt
from ssb_trl.prepare.summary import SUMMARY_FILENAME, PrepSummary, backends_used, summarize
from ssb_trl.soft_labels.schema import SoftLabelMetadata, tokenizer_fingerprint
from ssb_trl.tasks.prompts import PROMPT_TEMPLATE_VERSION, chat_prompt_ids, student_messages, text_ids
from ssb_trl.tasks.sources import BENCHMARK_PRESETS, QAExample, load_questions

logger = logging.getLogger(__name__)

__all__ = ["NoPairsError", "PrepConfig", "PrepSummary", "PrepareJob", "prepare_ssb_data"]


class NoPairsError(ValueError):
    """No question produced a training row; partial results stay on disk."""


class PrepareJob(Job):
    """``ssb-trl prepare``: the SSB dataset of a question set."""

    command = "ssb-trl prepare"
    stages = STAGES
    summary_filename = SUMMARY_FILENAME
    input_noun = "questions"
    config: PrepConfig

    def __init__(self, config: PrepConfig, model: Any = None, tokenizer: Any = None, backend: Any = None,
                 questions: list[QAExample] | None = None):  # fmt: skip
        super().__init__(config, model, tokenizer, backend)
        self.given_questions = questions

    # ------------------------------------------------------------------------------ before any file is written
    def preflight(self, main_process: bool) -> None:
        config = self.config
        config.__dict__.pop("hint_format", None)  # a template file is read once per run: now, as it is today
        config.hint_format  # noqa: B018
        self.inputs = self.given_questions if self.given_questions is not None else load_questions(config)
        config.check_backend_available()
        name = config.model_name_or_path
        model_config, context = self.check_model(name, "model_name_or_path", config.tokenizer_name_or_path)
        check_end_of_turn_token(self.tokenizer, self._generation_eos_ids(model_config), name)
        for flag, value in (
            ("rollout_max_new_tokens", config.rollout_max_new_tokens),
            ("teacher_max_new_tokens", config.teacher_max_new_tokens),
        ):
            if context is not None and value > context:
                raise ValueError(
                    f"{flag}={value} is more than {name!r} can hold: its context window is {context} positions, "
                    f"prompt included. Pass --{flag} below {context}. Nothing was written."
                )

    def _generation_eos_ids(self, model_config: Any) -> list[int]:
        """The eos ids generation will stop at, read without loading weights."""
        generation_config = getattr(self.model, "generation_config", None)
        if generation_config is None:
            try:
                generation_config = GenerationConfig.from_pretrained(
                    resolve_model_path(self.config.model_name_or_path)
                )
            except Exception:  # no generation_config.json: transformers derives it from the model config
                generation_config = GenerationConfig.from_model_config(model_config)
        return model_eos_ids(generation_config, self.tokenizer)

    @staticmethod
    def input_record(question: QAExample) -> dict[str, Any]:
        """A question as its shard's digest sees it. A reasoning-gym scorer records the size of the generated set,
        which grows with num_questions while the first questions stay the same: it is left out."""
        scorer = {k: v for k, v in (question.scorer or {}).items() if k != "size"}
        return {"id": question.id, "question": question.question, "answer": question.answer, "scorer": scorer}

    def identities(self) -> dict[str, dict[str, Any]]:
        config = self.config
        local = config.reasoning_gym_task is None and config.dataset_name not in BENCHMARK_PRESETS
        source = local_input_identity(config.dataset_name) if local else {"path": None, "sha256": None}
        return {
            "model": model_identity(config.model_name_or_path, self.model, self.tokenizer),
            "source": {**source, "name": config.dataset_name},
        }

    def resume_table(self) -> ResumeTable:
        return RESUME_TABLE

    def legacy_tokenizers(self) -> dict[str, tuple[Any, str]]:
        return {}  # preparation always recorded today's tokenizer digest

    # ------------------------------------------------------------------------------------------------ the work
    def model_name(self) -> str:
        return self.config.model_name_or_path

    def load_model(self, device: str | None) -> tuple[Any, Any]:
        config = self.config
        return load_model_and_tokenizer(
            config.model_name_or_path,
            dtype=config.dtype,
            device=device,
            tokenizer_name_or_path=config.tokenizer_name_or_path,
            device_map=config.teacher_device_map,
        )

    def _stages_to_generate(self) -> list[str]:
        """The generated stages the rows need: the rollouts, and (only for teacher answers) the teacher and the check."""
        if not self.config.generates_teacher_answers:
            return ["rollouts"]
        return ["rollouts", "teacher", *(["hint_check"] if self.config.hint_check_samples else [])]

    def needs_backend(self, work: WorkDir, todo: list[int], shards: list[list[Any]]) -> bool:
        return any(not work.shard_path(stage, s).exists() for s in todo for stage in self._stages_to_generate())

    def shard_finished(self, work: WorkDir, shard: int) -> bool:
        """Every stage of the shard is on disk (the hint check only when it is on)."""
        return all(work.shard_path(stage, shard).exists() for stage in [*self._stages_to_generate(), ROWS_STAGE])

    def process_shard(self, run: RunContext, shard: int, questions: list[QAExample]) -> None:
        work, backend, config = run.work, run.backend, self.config
        ids = [question.id for question in questions]
        done, clock = [], time.perf_counter()

        def finished(stage: str) -> None:  # each stage's wall-clock, in the log (experiment 3 reads its cost there)
            nonlocal clock
            done.append(f"{stage} ({time.perf_counter() - clock:.1f} s)")
            clock = time.perf_counter()

        rollouts = work.read_shard("rollouts", shard, ids)
        if rollouts is None:
            rollouts = [{**r, "generated_by": backend.name} for r in run_rollouts(backend, questions, config)]
            work.write_shard("rollouts", shard, rollouts)
            finished("rollouts")
            for stage in work.stage_names[1:]:  # made from other rollouts (the rollouts file was deleted)
                work.remove(stage, shard)
        teacher = work.read_shard("teacher", shard, ids)
        if teacher is None and config.generates_teacher_answers:
            records = run_teacher(backend, questions, rollouts, config)
            teacher = [{**r, "generated_by": backend.name} for r in records]
            work.write_shard("teacher", shard, teacher)
            finished("teacher answers")
            for stage in ("hint_check", ROWS_STAGE):  # made from other teacher answers: redo them
                work.remove(stage, shard)
        if (
            config.generates_teacher_answers
            and config.hint_check_samples
            and work.read_shard("hint_check", shard, ids) is None
        ):
            checks = run_hint_check(backend, questions, teacher, config)
            work.write_shard("hint_check", shard, [{**r, "generated_by": backend.name} for r in checks])
            finished("hint check")
        if not work.shard_path(ROWS_STAGE, shard).is_dir():
            if config.train_on == "teacher_answers":
                texts = self._teacher_answers(run, questions, rollouts, teacher)
            else:
                texts = self._rollouts(run, questions, rollouts)
            work.save_rows(shard, soft_label_rows(run.model, texts, config, run.show_progress, run.scorer))
            finished("soft labels")
        logger.info("Shard %d: generated %s (%s)", shard, ", ".join(done), backend.name if backend else "no engine")

    def _teacher_answers(
        self, run: RunContext, questions: list[QAExample], rollouts: list[dict], teacher: list[dict]
    ) -> list[TextToLabel]:
        """Each kept teacher answer: soft labels under the hinted prompt, stored under the student's."""
        config, tokenizer = self.config, run.tokenizer
        texts = []
        for question, rollout_record, teacher_record in zip(questions, rollouts, teacher):
            if teacher_record["kept_attempt"] is None:
                continue
            attempt = teacher_record["attempts"][teacher_record["kept_attempt"]]
            hinted = teacher_prompt(question, rollout_record["rollouts"], teacher_record["pair"], config)
            prompt = student_messages(question.question, config.system_prompt)
            texts.append(
                TextToLabel(
                    id=question.id,
                    answer=question.answer,
                    prompt=prompt,
                    completion=attempt["text"],
                    student_prompt_ids=chat_prompt_ids(tokenizer, prompt),
                    teacher_prompt_ids=chat_prompt_ids(tokenizer, hinted),
                    completion_ids=with_end_of_turn(attempt["token_ids"], run.end_of_turn, run.stop_ids),
                )
            )
        return texts

    def _rollouts(self, run: RunContext, questions: list[QAExample], rollouts: list[dict]) -> list[TextToLabel]:
        """The student's own rollouts as rows (``train_on`` rollouts or correct_rollouts), as the student wrote them.

        on-policy SSB: every rollout of a question the hint applies to (:func:`ssb_trl.prepare.stages.choose_hint`,
        the same choice the teacher stage makes), right, wrong or cut short, under the hinted teacher's soft labels:
        the signal on the student's own mistakes is what offline SSB never gives. A cut rollout gets no end of turn
        (the student did not stop there; its tokens still get the teacher's corrections). RFT: every question's
        verified, finished rollouts, an exact repeat once, under the student's own soft labels (no hint).
        """
        config, tokenizer = self.config, run.tokenizer
        on_policy = config.train_on == "rollouts"
        texts = []
        for question, record in zip(questions, rollouts):
            prompt = student_messages(question.question, config.system_prompt)
            student_ids = chat_prompt_ids(tokenizer, prompt)
            if on_policy:
                rng = random.Random(derive_seed(config.seed, question.id, "pair"))
                hint = choose_hint(record["rollouts"], rng, config)
                if hint is None:
                    continue
                teacher_ids = chat_prompt_ids(tokenizer, teacher_prompt(question, record["rollouts"], hint, config))
                chosen = list(enumerate(record["rollouts"]))
            else:
                teacher_ids, seen, chosen = student_ids, set(), []
                for index, rollout in enumerate(record["rollouts"]):
                    if rollout["correct"] and rollout["finished"] and rollout["text"] not in seen:
                        seen.add(rollout["text"])
                        chosen.append((index, rollout))
            for index, rollout in chosen:
                ids = rollout.get("token_ids")
                if ids is None:  # a folder written before rollouts kept their tokens: the text's own
                    ids = text_ids(tokenizer, rollout["text"])
                if rollout["finished"]:
                    ids = with_end_of_turn(ids, run.end_of_turn, run.stop_ids)
                if not ids:
                    continue
                texts.append(
                    TextToLabel(
                        id=f"{question.id}/rollout-{index}",
                        answer=question.answer,
                        prompt=prompt,
                        completion=rollout["text"],
                        student_prompt_ids=student_ids,
                        teacher_prompt_ids=teacher_ids,
                        completion_ids=list(ids),
                    )
                )
        return texts

    # --------------------------------------------------------------------------------- the end (main process)
    def summarize(self, run: RunContext, dataset: datasets.Dataset, report: RunReport) -> PrepSummary:
        work, config = run.work, self.config
        vocab_size = int(getattr(getattr(run.model, "config", None), "vocab_size", 0) or len(self.tokenizer))
        summary = summarize(work, report.num_shards, config, vocab_size)
        summary.generation_backend = report.backend
        summary.shards_generated, summary.shards_reused = report.generated, report.reused
        summary.generation_settings = report.generation_settings
        self.backends = sorted(backends_used(work, report.num_shards))
        summary.train_on = config.train_on
        summary.rows_by_kind = self._rows_by_kind(work, report.num_shards, dataset)
        if len(dataset) == 0:
            raise self._no_rows_error(work, summary)
        return summary

    def _rows_by_kind(self, work: WorkDir, num_shards: int, dataset: datasets.Dataset) -> dict[str, int]:
        """Rows by what their completion is: a right, wrong or cut-short rollout, or a teacher answer."""
        if self.config.generates_teacher_answers:
            return {"teacher answer": len(dataset)}
        kinds = {}
        for shard in range(num_shards):
            for record in read_jsonl(work.shard_path("rollouts", shard)) or []:
                for index, rollout in enumerate(record["rollouts"]):
                    kind = "cut short" if not rollout["finished"] else "right" if rollout["correct"] else "wrong"
                    kinds[f"{record['id']}/rollout-{index}"] = kind
        counts = {"right": 0, "wrong": 0, "cut short": 0}
        for row_id in dataset["id"]:
            counts[kinds[row_id]] += 1
        return counts

    def _no_rows_error(self, work: WorkDir, summary: PrepSummary) -> NoPairsError:
        logger.warning(
            "SSB data preparation kept no teacher answer; summary of %s:\n%s", work.output_dir, summary.table()
        )
        figures = (
            f"{summary.questions} questions, rollout accuracy {summary.rollout_accuracy:.1%} "
            f"({summary.rollouts_correct}/{summary.rollouts}), {summary.rollouts_without_answer} rollouts without an "
            f"answer, {summary.pairs} pairs, teacher yield {summary.teacher_kept}/{summary.teacher_questions} "
            f"(questions asked with a kept answer), {summary.teacher_attempts} attempts"
        )
        more_questions = (
            f"rerun into the same --output_dir with a larger --num_questions (now {summary.questions}): the finished "
            "shards are kept and only the new questions are sampled"
        )
        if self.config.train_on == "correct_rollouts":
            return NoPairsError(
                f"no rollout was verified correct and finished, so RFT has nothing to train on: {figures}. To fix "
                f"it, {more_questions}; an easier question set or more --num_rollouts need a new --output_dir. "
                f"Rollouts are kept in {work.root}."
            )
        if summary.teacher_questions == 0 or not self.config.generates_teacher_answers:
            return NoPairsError(
                f"no question yielded a pair (a correct and an incorrect rollout): {figures}. To fix it, {more_questions}"
                ". Settings that change the rollouts themselves (--num_rollouts, a higher --rollout_temperature, "
                "another model or question set: easier if accuracy is ~0%, harder if ~100%) need a new --output_dir. "
                f"Rollouts are kept in {work.root}."
            )
        return NoPairsError(
            f"the teacher never produced a verified-correct, finished answer: {figures}. To fix it, rerun into the "
            "same --output_dir with more --teacher_retries or a larger --teacher_max_new_tokens (the rollouts are "
            f"reused; only the teacher answers are redone), or {more_questions}. Work so far is kept in {work.root}."
        )

    def metadata(self, run: RunContext, summary: PrepSummary) -> SoftLabelMetadata:
        config = self.config
        identities = run.work.read_settings().get("identities", {})
        written = {  # who wrote the rows' completions, and whose soft labels they carry
            "teacher_answers": {"teacher_sampling": asdict(config.teacher_sampling)},
            # the hinted teacher's labels on the student's tokens: no sampling bounds those tokens in its top-K
            "rollouts": {"completions_written_by": "the student", "soft_labels_from": "the hinted teacher"},
            # the student's own labels on its own samples: its rollout sampling bounds them
            "correct_rollouts": {
                "completions_written_by": "the student",
                "soft_labels_from": "the student, without a hint",
                "teacher_sampling": asdict(config.rollout_sampling),
            },
        }[config.train_on]
        return SoftLabelMetadata(
            teacher_model=config.model_name_or_path,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
            top_k=config.soft_label_entries,
            temperature=config.soft_label_temperature,
            prompt_template_version=PROMPT_TEMPLATE_VERSION,
            source={
                **config.settings(),
                "kind": self.command,
                "seed": config.seed,
                "rollout_sampling": asdict(config.rollout_sampling),
                "train_on": config.train_on,
                **written,
                "rows_by_kind": summary.rows_by_kind,
                "generation_backends": self.backends,
                "model_fingerprint": identities.get("model"),
                "source_fingerprint": identities.get("source"),
                "teacher_hint": config.hint_identity,
                "teacher_hint_version": config.hint_format.version,
                "hint_gain": summary.hint_gain,
                "kept_answers_with_wrong_arithmetic_step": [summary.kept_with_wrong_step, summary.kept_steps_checked],
            },
            logprob_dtype=config.logprob_dtype,
            soft_label_mode=config.soft_label_mode,
            soft_label_draws=config.soft_label_draws if config.soft_label_mode == "sampled" else None,
        )

    def read_summary(self, data: dict[str, Any]) -> PrepSummary:
        data.pop("rollout_accuracy", None)
        return PrepSummary(**data)

    def log_summary(self, summary: PrepSummary) -> None:
        logger.info("SSB data preparation finished; dataset in %s\n%s", self.config.output_dir, summary.table())
        if summary.hint_warning():
            logger.warning("%s\n%s\n%s", "!" * 100, summary.hint_warning(), "!" * 100)


def prepare_ssb_data(
    config: PrepConfig,
    model: Any = None,
    tokenizer: Any = None,
    questions: list[QAExample] | None = None,
    show_progress: bool = True,
    backend: GenerationBackend | None = None,
) -> PrepSummary:
    """Run (or resume) data preparation; returns the summary (on every process; counts are global).

    ``model``/``tokenizer``/``questions`` may be passed in (e.g. from a notebook); otherwise they come from
    ``config``. So may a generation ``backend`` (to reuse a started vLLM engine; it is then not closed). Under
    ``accelerate launch`` the shards are dealt round-robin to the processes and the main process writes the dataset.
    """
    return run_job(PrepareJob(config, model, tokenizer, backend, questions), show_progress=show_progress)

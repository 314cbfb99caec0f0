"""Offline distillation data from any teacher (``ssb-trl label``), a job on the run engine (:mod:`ssb_trl.jobs`).

TRL's distillation trainers keep the teacher in memory next to the student at every step. ``ssb-trl label`` runs
the teacher once, teacher-forced over each completion, and stores its soft labels in the format of
:mod:`ssb_trl.soft_labels`; ``ssb-trl train`` (``SSBTrainer``) then trains any student that shares the teacher's
tokenizer from those labels, with no teacher loaded. Without completions in the input, the teacher writes them
first (the ``completions`` stage, through the generation engines). The rows of the input are read and checked by
:mod:`ssb_trl.label.inputs`; which setting redoes what on a rerun is :data:`ssb_trl.label.config.RESUME_TABLE`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets

from ssb_trl.generation.sampling import derive_seed
from ssb_trl.jobs.identity import local_input_identity, model_identity, tokenizer_digest
from ssb_trl.jobs.resume import ResumeTable
from ssb_trl.jobs.rows import TextToLabel, soft_label_rows, with_end_of_turn
from ssb_trl.jobs.runner import Job, RunContext, RunReport, run_job
from ssb_trl.jobs.workdir import WorkDir, read_jsonl
from ssb_trl.label.config import RESUME_TABLE, STAGES, LabelConfig
from ssb_trl.label.inputs import LabelExample, check_student_tokenizer, load_examples, tokenize_examples
from ssb_trl.models import load_model_and_tokenizer, load_tokenizer
from ssb_trl.soft_labels.schema import SoftLabelMetadata, tokenizer_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["LabelConfig", "LabelJob", "LabelSummary", "label_dataset"]

LABEL_PROMPT_VERSION = "dataset-prompts"
"""Recorded as the metadata's prompt_template_version: the prompts are the dataset's own, not ssb-trl's."""
SUMMARY_FILENAME = "label_summary.json"


@dataclass
class LabelSummary:
    """What a labelling run wrote (``label_summary.json``), and what became of each completion the teacher wrote:
    cut at teacher_max_new_tokens (kept without an end of turn, or dropped, per truncated_completions), empty, or
    too long for max_length."""

    output_dir: str = ""
    rows_in: int = 0
    rows_written: int = 0
    answer_tokens: int = 0
    completions_generated: int = 0
    completions_cut: int = 0
    cut_kept: int = 0
    dropped_cut: int = 0
    dropped_empty: int = 0
    dropped_too_long: int = 0
    shards_done: list[int] = field(default_factory=list)
    shards_reused: list[int] = field(default_factory=list)
    dataset_bytes: int = 0
    bytes_per_answer_token: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LabelJob(Job):
    """``ssb-trl label``: a teacher's soft labels on a prompt/completion dataset."""

    command = "ssb-trl label"
    stages = STAGES
    summary_filename = SUMMARY_FILENAME
    input_noun = "rows"
    config: LabelConfig

    def __init__(self, config: LabelConfig, model: Any = None, tokenizer: Any = None, backend: Any = None,
                 examples: list[LabelExample] | None = None):  # fmt: skip
        super().__init__(config, model, tokenizer, backend)
        self.given_examples = examples

    # ------------------------------------------------------------------------------ before any file is written
    def preflight(self, main_process: bool) -> None:
        """The teacher loads, K fits its vocabulary, the student shares its tokenizer, every row fits; then the
        rows are read and tokenized (``self.inputs``, ``self.tokens``)."""
        config, name = self.config, self.config.teacher_model_name_or_path
        _, context = self.check_model(name, "teacher_model_name_or_path")
        self.student_tokenizer = self.tokenizer
        if config.student_model_name_or_path:
            try:
                self.student_tokenizer = load_tokenizer(config.student_model_name_or_path)
            except Exception as exc:
                raise ValueError(
                    f"cannot load the tokenizer of the student {config.student_model_name_or_path!r} "
                    f"({type(exc).__name__}: {exc}); fix --student_model_name_or_path"
                ) from exc
            check_student_tokenizer(self.tokenizer, self.student_tokenizer, name, config.student_model_name_or_path)
        self.inputs = self.given_examples if self.given_examples is not None else load_examples(config)
        self.tokens = tokenize_examples(self.inputs, self.tokenizer, self.student_tokenizer, config, context)
        if any(token.completion is None for token in self.tokens):
            config.check_backend_available()

    def input_record(self, example: LabelExample) -> dict[str, Any]:
        return asdict(example)

    def identities(self) -> dict[str, dict[str, Any]]:
        config = self.config
        return {
            "teacher": model_identity(config.teacher_model_name_or_path, self.model, self.tokenizer),
            "student": {"tokenizer_sha256": tokenizer_digest(self.student_tokenizer)},
            "input": {**local_input_identity(config.dataset_name), "name": config.dataset_name},
        }

    def resume_table(self) -> ResumeTable:
        return RESUME_TABLE

    def legacy_tokenizers(self) -> dict[str, tuple[Any, str]]:
        """Label folders written before the run engine recorded a shorter tokenizer digest."""
        return {
            "teacher": (self.tokenizer, tokenizer_digest(self.tokenizer)),
            "student": (self.student_tokenizer, tokenizer_digest(self.student_tokenizer)),
        }

    # ------------------------------------------------------------------------------------------------ the work
    def model_name(self) -> str:
        return self.config.teacher_model_name_or_path

    def load_model(self, device: str | None) -> tuple[Any, Any]:
        config = self.config
        return load_model_and_tokenizer(
            config.teacher_model_name_or_path, dtype=config.dtype, device=device, device_map=config.teacher_device_map
        )

    def _shard_tokens(self, shard: int) -> list[Any]:
        size = self.config.shard_size
        return self.tokens[shard * size : (shard + 1) * size]

    def needs_backend(self, work: WorkDir, todo: list[int], shards: list[list[Any]]) -> bool:
        return any(
            any(t.completion is None for t in self._shard_tokens(s)) and not work.shard_path("completions", s).exists()
            for s in todo
        )

    def process_shard(self, run: RunContext, shard: int, examples: list[LabelExample]) -> None:
        tokens, config, work = self._shard_tokens(shard), self.config, run.work
        records: list[dict] = []
        if any(token.completion is None for token in tokens):
            records = work.read_shard("completions", shard, [e.id for e in examples]) or []
            if not records:
                records = self._generate(run, examples, tokens)
                work.write_shard("completions", shard, records)
        texts = []
        for index, (example, token) in enumerate(zip(examples, tokens)):
            text, ids = example.completion, token.completion
            if ids is None:
                text, ids = records[index]["text"], self._generated_ids(run, token, records[index])
                if ids is None:
                    continue  # dropped: counted in the summary
            texts.append(TextToLabel(example.id, example.answer, example.prompt, text, token.student_prompt,
                                     token.teacher_prompt, ids))  # fmt: skip
        work.save_rows(shard, soft_label_rows(run.model, texts, config, run.show_progress, run.scorer))
        logger.info("Shard %d: %d rows labelled", shard, len(texts))

    def _generated_ids(self, run: RunContext, token: Any, record: dict) -> list[int] | None:
        """A generated completion's tokens as stored, or None when it is dropped: empty, cut at
        teacher_max_new_tokens with ``truncated_completions=drop``, or too long for max_length. A finished one ends
        with its end of turn; a cut one that is kept has none (it would teach the student to stop there)."""
        config = self.config
        if not record["text"].strip():
            return None
        if record["finished"]:
            ids = with_end_of_turn(record["token_ids"], run.end_of_turn, run.stop_ids)
        elif config.truncated_completions == "keep":
            ids = [int(i) for i in record["token_ids"]]
        else:
            return None
        if config.max_length is not None and len(token.student_prompt) + len(ids) > config.max_length:
            return None
        return ids

    def _generate(self, run: RunContext, examples: list[LabelExample], tokens: list[Any]) -> list[dict]:
        """The teacher's completions of the shard's rows that have none (seeded per row id), as JSON-able records;
        rows that came with their completion get a record saying so, so the file holds one record per row."""
        config, backend = self.config, run.backend
        missing = [e for e, t in zip(examples, tokens) if t.completion is None]
        seeds = [derive_seed(config.seed, example.id, "label") for example in missing]
        outputs = backend.generate([e.teacher_prompt for e in missing], config.teacher_sampling, seed=seeds)
        generated = {
            e.id: {"id": e.id, "text": samples[0].text, "token_ids": samples[0].token_ids,
                   "finished": samples[0].finished, "generated_by": backend.name}
            for e, samples in zip(missing, outputs)
        }  # fmt: skip
        return [generated.get(e.id, {"id": e.id, "given": True}) for e in examples]

    # --------------------------------------------------------------------------------- the end (main process)
    def summarize(self, run: RunContext, dataset: datasets.Dataset, report: RunReport) -> LabelSummary:
        config, work = self.config, run.work
        to_generate = sum(token.completion is None for token in self.tokens)
        kept = set(dataset["id"]) if len(dataset) else set()
        counts = dict.fromkeys(("cut", "cut_kept", "dropped_cut", "empty", "long"), 0)
        for shard in range(report.num_shards if to_generate else 0):
            for record in read_jsonl(work.shard_path("completions", shard)) or []:
                if record.get("given"):
                    continue
                cut = not record["finished"]
                counts["cut"] += cut
                if not record["text"].strip():
                    counts["empty"] += 1
                elif record["id"] in kept:
                    counts["cut_kept"] += cut
                elif cut and config.truncated_completions == "drop":
                    counts["dropped_cut"] += 1
                else:
                    counts["long"] += 1
        drops = (
            f"{counts['dropped_cut']} cut at teacher_max_new_tokens={config.teacher_max_new_tokens} "
            f"(--truncated_completions drop), {counts['empty']} empty, {counts['long']} longer than "
            f"max_length={config.max_length}"
        )
        if len(dataset) == 0:
            keep = (
                "rerun here with --truncated_completions keep (the completions on disk are reused), or "
                if counts["dropped_cut"]
                else ""
            )
            raise ValueError(
                f"no row was labelled: of the teacher's {to_generate} completions, {drops}. To keep rows, {keep}rerun "
                "with a larger --teacher_max_new_tokens (and --max_length) into a new --output_dir (this one keeps the "
                f"completions, which a rerun here would reuse: {str(work.root)!r}), or give the completions in a "
                "'completion' column."
            )
        if len(self.inputs) - len(dataset):
            logger.warning("%d of %d generated completions were dropped: %s. Raise those settings to keep them.",
                           len(self.inputs) - len(dataset), to_generate, drops)  # fmt: skip
        if counts["cut_kept"]:
            logger.warning(
                "%d of %d generated completions were cut at teacher_max_new_tokens=%d and kept without an end of turn "
                "(--truncated_completions keep); raise --teacher_max_new_tokens to have them finished",
                counts["cut_kept"], to_generate, config.teacher_max_new_tokens,
            )  # fmt: skip
        return LabelSummary(
            output_dir=str(work.output_dir),
            rows_in=len(self.inputs),
            rows_written=len(dataset),
            completions_generated=to_generate,
            completions_cut=counts["cut"],
            cut_kept=counts["cut_kept"],
            dropped_cut=counts["dropped_cut"],
            dropped_empty=counts["empty"],
            dropped_too_long=counts["long"],
            shards_done=report.generated,
            shards_reused=report.reused,
        )

    def metadata(self, run: RunContext, summary: LabelSummary) -> SoftLabelMetadata:
        config = self.config
        same_prompt = all(e.teacher_prompt == e.prompt for e in self.inputs)
        generated = summary.completions_generated > 0
        every_row = summary.completions_generated == summary.rows_in  # else some completions are the dataset's
        source: dict[str, Any] = {
            "kind": self.command,
            "dataset": {
                k: getattr(config, k) for k in ("dataset_config", "dataset_name", "dataset_split", "num_rows")
            },
            "teacher_fingerprint": run.work.read_settings()["identities"]["teacher"],
            "student_model": config.student_model_name_or_path,
            "teacher_prompt": "the student's prompt"
            if same_prompt
            else (
                "the 'teacher_prompt' column" if config.teacher_system_prompt is None else "--teacher_system_prompt"
            ),
            "teacher_sees_student_prompt": same_prompt,
            "teacher_system_prompt": config.teacher_system_prompt,
            "completions": (
                "generated by the teacher" if every_row else "partly the dataset's, partly generated by the teacher"
            )
            if generated
            else "the dataset's",
            "max_length": config.max_length,
        }
        if generated:
            source["generation_sampling"] = asdict(config.teacher_sampling)
            source["seed"] = config.seed
            source["truncated_completions"] = config.truncated_completions
            source["completions_cut_kept"] = summary.cut_kept
        if every_row:  # the train-time check that answers are the teacher's samples: only when they all are
            source["teacher_sampling"] = asdict(config.teacher_sampling)
        return SoftLabelMetadata(
            teacher_model=config.teacher_model_name_or_path,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
            top_k=config.soft_label_entries,
            temperature=config.soft_label_temperature,
            prompt_template_version=LABEL_PROMPT_VERSION,
            source=source,
            logprob_dtype=config.logprob_dtype,
            soft_label_mode=config.soft_label_mode,
            soft_label_draws=config.soft_label_draws if config.soft_label_mode == "sampled" else None,
        )

    def read_summary(self, data: dict[str, Any]) -> LabelSummary:
        return LabelSummary(**data)

    def log_summary(self, summary: LabelSummary) -> None:
        logger.info(
            "Labelled %d rows (%d completion tokens, %.0f bytes each on disk) into %s; %d shard(s) done, %d reused",
            summary.rows_written, summary.answer_tokens, summary.bytes_per_answer_token, summary.output_dir,
            len(summary.shards_done), len(summary.shards_reused),
        )  # fmt: skip


def label_dataset(
    config: LabelConfig,
    model: Any = None,
    tokenizer: Any = None,
    examples: list[LabelExample] | None = None,
    show_progress: bool = True,
    backend: Any = None,
) -> LabelSummary:
    """Run (or resume) labelling; returns the summary (on every process).

    ``model``/``tokenizer`` (the teacher) and ``examples`` may be passed in; otherwise they come from ``config``.
    Under ``accelerate launch`` the shards are dealt round-robin to the processes and the main process writes the
    dataset.
    """
    return run_job(LabelJob(config, model, tokenizer, backend, examples), show_progress=show_progress)

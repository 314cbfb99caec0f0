"""Run (or resume) an offline job: check, lock, reconcile settings, deal shards to processes, finalize, publish.

A job (:class:`Job`: ``ssb-trl prepare``, ``ssb-trl label``) says what its inputs, stages and rows are; the
runner does the rest the same way for every job. Inputs are cut into fixed shards of ``shard_size``; each stage
of each shard persists its result under ``<output_dir>/ssb_work/`` as soon as it exists (atomically, so a crash
never leaves a file a rerun would take for finished work), and a rerun skips what is on disk. Under ``accelerate
launch`` the shards are dealt round-robin to the processes and the main process, which holds the folder's lock,
writes the dataset. Every random draw of a job is seeded per input (by its id), so a resumed run, a run on N
processes and an uninterrupted run write the same dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import datasets
import torch
from accelerate import PartialState
from tqdm.auto import tqdm
from transformers import AutoConfig

from ssb_trl.generation.base import eos_token_ids
from ssb_trl.generation.vllm_engine import require_vllm
from ssb_trl.jobs.identity import shard_digests
from ssb_trl.jobs.resume import ResumeTable, check_claimed, claim, upgrade_settings
from ssb_trl.jobs.rows import end_of_turn_id
from ssb_trl.jobs.settings import ROWS_STAGE, field_defaults, fingerprint
from ssb_trl.jobs.workdir import Stage, WorkDir
from ssb_trl.models import check_model_available, load_tokenizer, resolve_device, resolve_model_path
from ssb_trl.soft_labels.io import push_soft_label_dataset_to_hub, save_soft_label_dataset, saved_dataset_bytes
from ssb_trl.soft_labels.schema import COMPLETION_MASK, SoftLabelMetadata, features
from ssb_trl.storage import check_writable_dir, require_hub_access, write_json, write_text

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a job's shards are processed with (on each process)."""

    work: WorkDir
    state: Any
    model: Any = None
    tokenizer: Any = None
    backend: Any = None
    scorer: Any = None
    """A vLLM engine or server that computes the soft labels (``--soft_label_backend``); None: the loaded model."""
    end_of_turn: int = 0
    stop_ids: list[int] = field(default_factory=list)
    show_progress: bool = False


@dataclass
class RunReport:
    """Which shards this run did and which it found done (for the job's summary)."""

    num_shards: int
    generated: list[int]
    reused: list[int]
    backend: str = ""
    generation_settings: dict[str, Any] = field(default_factory=dict)


class Job(ABC):
    """One offline job on the runner: its command, stages, inputs, identities, shard work and final dataset."""

    command: ClassVar[str]
    """How users run it (``ssb-trl prepare``): recorded in the folder and named in its messages."""
    stages: ClassVar[tuple[Stage, ...]]
    """Its stages in order; the last is ``rows``."""
    summary_filename: ClassVar[str]
    input_noun: ClassVar[str] = "inputs"
    """What its messages call the inputs ("questions", "rows")."""

    def __init__(self, config: Any, model: Any = None, tokenizer: Any = None, backend: Any = None):
        self.config, self.model, self.tokenizer, self.backend = config, model, tokenizer, backend
        self.inputs: list[Any] = []

    @classmethod
    def work_dir(cls, output_dir: str | os.PathLike[str]) -> WorkDir:
        """The work folder of a run of this job in ``output_dir``."""
        return WorkDir(output_dir, cls.command, cls.stages, cls.input_noun)

    # ------------------------------------------------------------------------------ before any file is written
    @abstractmethod
    def preflight(self, main_process: bool) -> None:
        """Check everything that can fail before any work (models, tokenizers, lengths) and load the inputs
        (``self.inputs``, each with an ``id``); set ``self.tokenizer``."""

    def check_model(self, name: str, flag: str, tokenizer_name: str | None = None) -> tuple[Any, int | None]:
        """Before any file is written: the model's config loads (``self.model``'s when given), and so does its
        tokenizer (set as ``self.tokenizer``), K (or N) fits its vocabulary. Returns (model config, its context
        window or None). ``flag`` is the command's model flag, named in the refusal."""
        if self.model is not None:
            model_config = self.model.config
        else:
            try:
                check_model_available(name)
                model_config = AutoConfig.from_pretrained(resolve_model_path(name))
            except Exception as exc:  # any loading failure: re-raised with what to fix
                raise ValueError(
                    f"cannot load the model {name!r} ({type(exc).__name__}: {exc}). Nothing was written; pass a local "
                    f"model folder, 'bundled:smollm2-135m-instruct', or a Hub id (in the local cache when offline) as "
                    f"--{flag}"
                ) from exc
        if self.tokenizer is None:
            try:
                self.tokenizer = load_tokenizer(tokenizer_name or name)
            except Exception as exc:
                raise ValueError(
                    f"cannot load the tokenizer {tokenizer_name or name!r} ({type(exc).__name__}: {exc}). Nothing was "
                    f"written; fix --{flag}" + (" (or --tokenizer_name_or_path)" if tokenizer_name else "")
                ) from exc
        text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        self.config.check_vocabulary(getattr(text_config, "vocab_size", None) or len(self.tokenizer), name)
        context = getattr(text_config, "max_position_embeddings", None)
        return model_config, context if isinstance(context, int) else None

    @abstractmethod
    def input_record(self, item: Any) -> dict[str, Any]:
        """What an input is, as JSON (its shard's digest is taken over these)."""

    @abstractmethod
    def identities(self) -> dict[str, dict[str, Any]]:
        """The models, tokenizers and input files of this run by content (:mod:`ssb_trl.jobs.identity`)."""

    @abstractmethod
    def resume_table(self) -> ResumeTable:
        """Which stage each setting feeds."""

    def legacy_tokenizers(self) -> dict[str, tuple[Any, str]]:
        """Identity name -> (tokenizer, today's digest), to read a folder written before the run engine."""
        return {}

    # ------------------------------------------------------------------------------------------------ the work
    @abstractmethod
    def load_model(self, device: str | None) -> tuple[Any, Any]:
        """The model (and tokenizer) the shards run on."""

    @abstractmethod
    def model_name(self) -> str:
        """The model's name or path, as the user gave it (the generation engines load it by name)."""

    def needs_backend(self, work: WorkDir, todo: list[int], shards: list[list[Any]]) -> bool:
        """Whether the shards to do generate text (else no generation engine is started)."""
        return True

    def shard_finished(self, work: WorkDir, shard: int) -> bool:
        return work.shard_path(ROWS_STAGE, shard).is_dir()

    @abstractmethod
    def process_shard(self, run: RunContext, shard: int, items: list[Any]) -> None:
        """Do the shard's missing stages, writing each stage's result as soon as it exists."""

    # --------------------------------------------------------------------------------- the end (main process)
    @abstractmethod
    def summarize(self, run: RunContext, dataset: datasets.Dataset, report: RunReport) -> Any:
        """The run's summary (a dataclass with ``to_dict``, ``answer_tokens``, ``dataset_bytes`` and
        ``bytes_per_answer_token``); raises when the dataset kept no row, saying why and what to do."""

    @abstractmethod
    def metadata(self, run: RunContext, summary: Any) -> SoftLabelMetadata:
        """The dataset's metadata."""

    @abstractmethod
    def read_summary(self, data: dict[str, Any]) -> Any:
        """The summary back from its JSON (what every process returns)."""

    def log_summary(self, summary: Any) -> None:
        logger.info("%s finished; dataset in %s", self.command, self.config.output_dir)


def distributed_state(config: Any) -> Any:
    """Accelerate's process state; on CPU it must be asked for explicitly, or each process runs alone."""
    use_cpu = (
        getattr(config, "device", None) == "cpu"
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    state = PartialState(cpu=use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"launched as {launched} processes but accelerate set up {state.num_processes}; the processes would "
            "duplicate each other's work. On CPU use an accelerate config with distributed_type MULTI_GPU and "
            "use_cpu: true (`ssb-trl prepare|label --accelerate_config multi_gpu` does)."
        )
    return state


def run_job(job: Job, show_progress: bool = True) -> Any:
    """Run (or resume) ``job``; returns its summary on every process (its counts are global)."""
    config = job.config
    if getattr(config, "device", None):  # a GPU this machine lacks: refused before any file exists
        resolve_device(config.device)
    if config.push_to_hub:  # an upload that would fail after the whole run: refused before it starts
        require_hub_access("--push_to_hub", "the dataset stays in --output_dir either way")
    state = distributed_state(config)
    work = job.work_dir(config.output_dir)
    if state.is_main_process:  # the others would race with the main process creating the run's files
        work.check_usable()
    job.preflight(main_process=state.is_main_process)
    if getattr(config, "soft_label_backend", "transformers") == "vllm":
        require_vllm("--soft_label_backend vllm", "--soft_label_backend transformers")  # before any file is written
    check_writable_dir(config.output_dir, "output_dir")
    records = [job.input_record(item) for item in job.inputs]
    settings = {
        "kind": job.command,
        "config": fingerprint(config),
        "identities": job.identities(),
        "inputs": {"count": len(records), "shard_sha256": shard_digests(records, config.shard_size)},
    }
    if not state.is_main_process:  # the processes of one launch are one run: its main process holds the lock
        return _run(job, state, work, settings, show_progress)
    work.lock.acquire()
    try:
        return _run(job, state, work, settings, show_progress)
    finally:
        work.lock.release()


def _run(job: Job, state: Any, work: WorkDir, settings: dict[str, Any], show_progress: bool) -> Any:
    config, size, inputs = job.config, job.config.shard_size, job.inputs
    num_shards = (len(inputs) + size - 1) // size
    shards = [inputs[s * size : (s + 1) * size] for s in range(num_shards)]
    if state.is_main_process:
        recorded = upgrade_settings(work.read_settings(), job.legacy_tokenizers(), job.command)
        if recorded is not None and recorded != work.read_settings():
            work.write_settings(recorded)  # a folder of an earlier version, in today's layout
        table = job.resume_table()
        notes = claim(work, settings, replace(table, defaults={**field_defaults(config), **table.defaults}))
        work.check_shards([[item.id for item in shard] for shard in shards])
        # A finished run's summary and marker are rewritten at the end; drop them so no process reads them early.
        work.done_path.unlink(missing_ok=True)
        (work.output_dir / job.summary_filename).unlink(missing_ok=True)
        logger.info(
            "%s `%s` in %s (%d %s)",
            "Resuming" if recorded is not None else "Starting",
            job.command,
            config.output_dir,
            len(inputs),
            job.input_noun,
        )
        for note in notes:
            logger.warning("%s: %s", config.output_dir, note)
    state.wait_for_everyone()
    if not state.is_main_process:
        check_claimed(work, settings)
    reused = [s for s in range(num_shards) if job.shard_finished(work, s)]
    mine = [s for s in range(num_shards) if s % state.num_processes == state.process_index]
    todo = [s for s in mine if s not in reused]
    run = RunContext(work, state, job.model, job.tokenizer, job.backend, show_progress=show_progress)
    backend_kind, backend_reason = config.resolve_backend()
    generating = bool(todo) and job.needs_backend(work, todo, shards)
    scoring = getattr(config, "soft_label_backend", "transformers")
    if todo and state.num_processes > 1 and ((generating and backend_kind == "vllm") or scoring == "vllm"):
        raise ValueError(
            f"a local vLLM engine per process ({state.num_processes} processes) is not supported: for many GPUs "
            "start one server (`vllm serve MODEL --data-parallel-size N`) and pass --vllm_server_base_url (docs/prepare.md)"
        )
    device_map = getattr(config, "teacher_device_map", None)
    if (
        todo
        and device_map is not None
        and (state.num_processes > 1 or (generating and backend_kind == "transformers"))
    ):
        raise ValueError(
            f"--teacher_device_map {device_map} spreads one teacher over the GPUs: run one process, and generate "
            "through vLLM (--generation_backend vllm, or a server), not the transformers backend"
        )
    own_backend = generating and run.backend is None
    if todo:
        # A teacher scored and generated through vLLM is never loaded here: it may not fit one device.
        if run.model is None and (scoring == "transformers" or (generating and backend_kind == "transformers")):
            device = config.device or (str(state.device) if state.num_processes > 1 else None)
            run.model, run.tokenizer = job.load_model(device)
        if state.num_processes > 1 and run.model is not None and run.model.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
        inner_progress = show_progress and state.is_local_main_process
        if own_backend:
            from ssb_trl.generation.engine import make_backend  # only a job that generates pays for the engines

            run.backend = make_backend(
                config,
                model=run.model,
                tokenizer=run.tokenizer,
                model_name_or_path=job.model_name(),
                dtype=config.dtype,
                max_batch_size=config.generation_batch_size,
                max_batch_tokens=config.generation_max_batch_tokens,
                show_progress=inner_progress,
            )
        try:
            if scoring != "transformers":
                from ssb_trl.generation.engine import make_scorer

                run.scorer = make_scorer(
                    config,
                    scoring,
                    backend=run.backend,
                    model=run.model,
                    tokenizer=run.tokenizer,
                    model_name_or_path=job.model_name(),
                    dtype=config.dtype,
                    show_progress=inner_progress,
                )
            run.show_progress = inner_progress
            run.end_of_turn = end_of_turn_id(run.tokenizer)
            # The generation engines stop at these (read from the model's files when it is not loaded).
            run.stop_ids = eos_token_ids(run.model, run.tokenizer, job.model_name())
            logger.info(
                "Process %d/%d: %d of its %d shards to do (%d %s in %d shards in all; generation: %s; soft labels: %s)",
                state.process_index,
                state.num_processes,
                len(todo),
                len(mine),
                len(inputs),
                job.input_noun,
                num_shards,
                f"{run.backend.name}, {backend_reason}" if run.backend is not None else "none",
                run.scorer.name if run.scorer is not None else "transformers",
            )
            bar = tqdm(todo, desc=f"Shards (process {state.process_index})", unit="shard", disable=not show_progress)
            for shard in bar:
                job.process_shard(run, shard, shards[shard])
        finally:
            if run.scorer is not None:
                run.scorer.close()  # an engine it started; the generation engine is closed below
            if own_backend:
                run.backend.close()
    state.wait_for_everyone()
    error: Exception | None = None
    if state.is_main_process:
        try:
            report = RunReport(
                num_shards=num_shards,
                generated=[s for s in range(num_shards) if s not in reused],
                reused=reused,
                backend=backend_kind if generating else "",  # rows redone from saved generations start no engine
                generation_settings=(
                    {**run.backend.settings(), "shard_size": size} if todo and run.backend is not None else {}
                ),
            )
            summary = _finalize(job, run, report)
            job.log_summary(summary)
        except Exception as exc:  # re-raised below, after the other processes have been released
            error = exc
    state.wait_for_everyone()
    if error is not None:
        raise error
    summary_path = work.output_dir / job.summary_filename
    if not summary_path.is_file():
        raise RuntimeError("the main process failed to write the dataset; see its error above")
    return job.read_summary(json.loads(summary_path.read_text(encoding="utf-8")))


def _finalize(job: Job, run: RunContext, report: RunReport) -> Any:
    """Concatenate the shards' rows, summarize, save the dataset with its metadata, publish it, push it."""
    work, config = run.work, job.config
    missing = [s for s in range(report.num_shards) if not work.shard_path(ROWS_STAGE, s).is_dir()]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} have no rows on disk; a process failed. Rerun to finish them.")
    parts = [rows for rows in map(work.load_rows, range(report.num_shards)) if rows is not None]
    if parts:
        dataset = datasets.concatenate_datasets(parts)
    else:
        row_features = features(config.logprob_dtype)
        dataset = datasets.Dataset.from_dict({name: [] for name in row_features}, features=row_features)
    summary = job.summarize(run, dataset, report)
    metadata = job.metadata(run, summary)
    # What computed this run's soft labels (finished shards reused from an earlier run may have had another engine:
    # the same distribution, to float rounding).
    scorer = run.scorer.name if run.scorer is not None else getattr(config, "soft_label_backend", "transformers")
    metadata.source.setdefault("soft_label_backend", scorer)
    staging = work.root / "final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    save_soft_label_dataset(dataset, str(staging), metadata)
    work.publish(staging)
    summary.answer_tokens = int(sum(sum(mask) for mask in dataset[COMPLETION_MASK]))
    summary.dataset_bytes = saved_dataset_bytes(work.output_dir) or 0
    summary.bytes_per_answer_token = summary.dataset_bytes / max(summary.answer_tokens, 1)
    write_json(work.output_dir / job.summary_filename, summary.to_dict())
    write_text(work.done_path, "done\n")
    if config.push_to_hub:
        logger.info("Pushing the dataset to the Hub as %s", config.hub_dataset_id)
        push_soft_label_dataset_to_hub(dataset, config.hub_dataset_id, metadata, private=config.hub_private)
    return summary

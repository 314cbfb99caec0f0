"""Train a model with SSB on a soft-label dataset (made by `ssb-trl prepare`).

    ssb-trl train --config recipes/configs/demo.yaml --dataset_name outputs/demo/data
    ssb-trl train --config recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml --accelerate_config deepspeed_zero3
    accelerate launch --config_file ssb_trl/accelerate_configs/deepspeed_zero3.yaml \\
        -m ssb_trl.scripts.train --config recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml

Every `SSBConfig` (= `SFTConfig` + loss settings) and `ModelConfig` field is a flag; `--config` reads a
YAML whose keys are those flags (CLI flags override it; an unknown key is an error). LoRA comes from
`ModelConfig` (`--use_peft --lora_r 32 ...`). `--ce_weight 1 --kd_weight 0` trains the hard-label
baseline on the same teacher answers.

Rerunning into an --output_dir that holds an earlier run (checkpoints, or a trained model) is refused,
saying how to go on: `--resume_from_checkpoint true` continues from its latest checkpoint (and starts a
run when the folder has none yet, so one command serves a first launch and every relaunch);
`--overwrite_output_dir true` starts over (its checkpoint folders are deleted first, so that a later resume
cannot pick up the old run's).

Resuming takes the newest *complete* checkpoint (:func:`checkpoint_problem`): one cut short by a crash or a
kill while it was written is named in a warning and skipped. A run whose checkpoint has reached the run's end
(`--max_steps`, or the epochs it was started with) is finished: relaunched, it says so and trains nothing. The
data a run trains on is recorded in `<output_dir>/ssb_train_dataset.json` when it starts; resuming it on other
data is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import zipfile
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerState
from transformers.hf_argparser import string_to_bool
from trl import ModelConfig, TrlParser, get_peft_config

from ssb_trl import SSBConfig, SSBTrainer, load_soft_label_dataset
from ssb_trl.cli import run_script
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts import configure_logging
from ssb_trl.storage import require_hub_access, write_json

logger = logging.getLogger("ssb_trl.train")


@dataclass
class TrainScriptArguments:
    """Where the soft-label data comes from and how the result is saved."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Soft-label dataset: a directory written by `ssb-trl prepare`, or a Hub dataset id."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub datasets)."})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the rows for an eval loss (0 = no eval set)."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "With LoRA: also save the adapter merged into the base model under <output_dir>/merged."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an --output_dir that holds an earlier run (its checkpoint-* folders are deleted "
            "first). Without it such a folder is refused; --resume_from_checkpoint true continues the run instead."
        },
    )

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(
                f"--eval_fraction {self.eval_fraction} is not a fraction of the rows: pass a number in [0, 1) (0.1 holds "
                "out 10% of the rows for an eval loss; 0 = no eval set)"
            )


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # Trainer's checkpoint folders (transformers.trainer_utils)
_SAVED_RUN_FILES = (
    "trainer_state.json",  # written by this recipe once the model is saved
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def resume_setting(value: str | bool | None) -> str | bool | None:
    """--resume_from_checkpoint as Trainer.train takes it: True = the latest checkpoint of --output_dir.

    TrainingArguments types it as a string, so the CLI gives "true" (which Trainer would take for a folder
    named true) and YAML a bool; a path stays a path.
    """
    if value is None or isinstance(value, bool):
        return value or None
    try:
        return string_to_bool(value.strip()) or None
    except ArgumentTypeError:  # not a yes/no word: a checkpoint path
        return value


def _checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint-<step> folders of `output_dir`, by step."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def _saved_model(output_dir: Path) -> list[str]:
    return [name for name in _SAVED_RUN_FILES if (output_dir / name).is_file()]


_TRAINER_STATE = "trainer_state.json"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
_WEIGHTS += ("adapter_model.bin", "pytorch_model.bin.index.json")


def _unreadable(path: Path) -> str | None:
    """Why a weights or state file cannot be loaded (its header or archive index), else None; reads no tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:  # checks that the header's tensors fit in the file
                handle.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            zipfile.ZipFile(path).close()  # torch.save's archive: its index is at the end, so a cut file has none
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the checkpoint is damaged
        return f"{path.name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete.

    Complete means: ``trainer_state.json`` (Trainer writes it last, so a checkpoint cut short by a crash or a kill
    lacks it) holds a step; the model's or adapter's weights are there (``model.safetensors``, its index and every
    shard it names, ``pytorch_model.bin``, ``adapter_model.*``; or DeepSpeed's ``global_step*`` folder); and every
    safetensors, ``.pt``/``.pth``/``.bin`` and JSON file at its top reads (a header or archive index that fits
    the file: a cut file does not). The optimizer and scheduler may be missing (``save_only_model``: training
    warns that they restart).
    """
    state_file = checkpoint / _TRAINER_STATE
    if not state_file.is_file():
        return f"it has no {_TRAINER_STATE} (Trainer writes it last: the checkpoint was cut short)"
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    for path in files:
        problem = _unreadable(path)
        if problem is not None:
            return problem
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"its {_TRAINER_STATE} holds no global_step"
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.iterdir())
    weights = [name for name in _WEIGHTS if (checkpoint / name).is_file()]
    if not weights and not deepspeed:
        return f"it has no model or adapter weights (none of {', '.join(_WEIGHTS)})"
    for index in (name for name in weights if name.endswith(".index.json")):
        shards = set(json.loads((checkpoint / index).read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (checkpoint / shard).is_file())
        if missing:
            return f"{index} names missing shard(s) {', '.join(missing[:3])}"
    return None


def _newest_complete_checkpoint(folder: Path, checkpoints: list[Path]) -> Path:
    """The newest complete checkpoint; the newer incomplete ones are named in a warning (or, with none complete,
    in the error: which folders to delete)."""
    skipped = []
    for checkpoint in reversed(checkpoints):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if skipped:
                logger.warning(
                    "Skipping incomplete checkpoint(s) in %s: %s. Resuming from %s instead (the steps after it are "
                    "trained again and their checkpoints rewritten).",
                    folder,
                    "; ".join(skipped),
                    checkpoint.name,
                )
            return checkpoint
        skipped.append(f"{checkpoint.name}: {problem}")
    raise ValueError(
        f"--resume_from_checkpoint true: no checkpoint in {str(folder)!r} is complete ({'; '.join(skipped)}), so "
        f"there is nothing to resume from. Delete {' '.join(str(c) for c in checkpoints)} to start the run again "
        "from step 0 (or add --overwrite_output_dir true instead of --resume_from_checkpoint, which deletes them)."
    )


def decide_start(
    output_dir: str, resume: str | bool | None, overwrite: bool, is_main_process: bool = True
) -> str | bool | None:
    """Where training starts, or a refusal naming the flags to rerun with; returns `resume_from_checkpoint`.

    Trainer alone would start again from step 0 in a folder holding an earlier run, overwriting its model and
    leaving its checkpoints beside the new ones (a later resume would then pick the old run's latest).
    """
    folder = Path(output_dir)
    checkpoints, saved = _checkpoints(folder), _saved_model(folder)
    if overwrite:
        if resume:
            raise ValueError(
                "--overwrite_output_dir true starts over and --resume_from_checkpoint continues: pass one of them."
            )
        if is_main_process:
            for checkpoint in checkpoints:
                shutil.rmtree(checkpoint)
            if checkpoints:
                logger.warning(
                    "--overwrite_output_dir: deleted %d checkpoint(s) of the earlier run in %s",
                    len(checkpoints),
                    folder,
                )
        return None
    found = (
        f"{len(checkpoints)} checkpoint(s) ({checkpoints[0].name} .. {checkpoints[-1].name})" if checkpoints else ""
    )
    if saved:
        found += (" and " if found else "") + f"a trained model ({', '.join(saved)})"
    start_over = (
        "to start over in this folder, add --overwrite_output_dir true (YAML: overwrite_output_dir: true; it "
        "deletes the old checkpoints); or pass a new --output_dir"
    )
    if resume is True:
        if checkpoints:
            checkpoint = _newest_complete_checkpoint(folder, checkpoints)
            logger.info("Resuming from %s (the latest complete checkpoint in %s)", checkpoint, folder)
            return str(checkpoint)
        if saved:
            raise ValueError(
                f"--resume_from_checkpoint true: {output_dir!r} holds {found} but no checkpoint to resume from (the "
                "run saved none: save_strategy='no'?). To train that model further, pass it as --model_name_or_path "
                f"{output_dir} with a new --output_dir; {start_over}."
            )
        logger.info("No checkpoint in %s yet: starting the run from step 0", folder)
        return None
    if resume is not None:
        if not Path(resume).is_dir():
            latest = f" (the latest here is {checkpoints[-1]})" if checkpoints else ""
            raise ValueError(
                f"--resume_from_checkpoint {resume!r} is not a checkpoint folder. Pass the path of one{latest}, or "
                "true for the latest checkpoint in --output_dir."
            )
        problem = checkpoint_problem(Path(resume))
        if problem is not None:
            raise ValueError(
                f"--resume_from_checkpoint {resume!r} is incomplete: {problem}. Pass another checkpoint, or true for "
                "the newest complete one in --output_dir."
            )
        return resume
    if found:
        resume_hint = (
            "To continue that run, rerun the same command with --resume_from_checkpoint true (YAML: "
            f"resume_from_checkpoint: true; it resumes from {checkpoints[-1].name}); "
            if checkpoints
            else f"To train that model further, pass it as --model_name_or_path {output_dir} with a new --output_dir; "
        )
        raise ValueError(
            f"--output_dir {output_dir!r} already holds {found} of an earlier run; training again would restart at "
            f"step 0 and overwrite it. {resume_hint}{start_over}."
        )
    return None


def finished_state(checkpoint: str | None, args: SSBConfig) -> dict | None:
    """The trainer state of ``checkpoint`` when it is at (or past) the end of the run ``args`` describe, else None.

    Trainer, resumed from such a checkpoint, trains on: it skips the batches already seen and takes the next
    step before it checks the step count (``--max_steps 1`` resumed wrote checkpoint-2). The end is
    ``--max_steps``, or, counted in epochs, the checkpoint's own ``max_steps`` when the epochs are unchanged.
    """
    if checkpoint is None:
        return None
    state = json.loads((Path(checkpoint) / _TRAINER_STATE).read_text(encoding="utf-8"))
    step, end = state.get("global_step", 0), None
    if args.max_steps > 0:
        end = args.max_steps
    elif state.get("num_train_epochs") == math.ceil(args.num_train_epochs) and (state.get("max_steps") or 0) > 0:
        end = state["max_steps"]
    return state if end is not None and step >= end else None


def _final_model_at(output_dir: Path, step: int) -> bool:
    """Whether ``output_dir`` holds the run's final model, saved at ``step``."""
    try:
        saved_step = json.loads((output_dir / _TRAINER_STATE).read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return False
    return saved_step == step and any(name != _TRAINER_STATE for name in _saved_model(output_dir))


_DATASET_RECORD = "ssb_train_dataset.json"
"""In --output_dir: the data the run started on (name, resolved location, split, rows, content fingerprint)."""


def dataset_identity(name: str, split: str, dataset: Any) -> dict[str, Any]:
    """What the training data is: as named, where it resolves, which split, how many rows, its fingerprint."""
    path = Path(name).expanduser()
    return {
        "dataset_name": name,
        "location": str(path.resolve()) if path.exists() else name,
        "split": split,
        "num_rows": len(dataset),
        "fingerprint": getattr(dataset, "_fingerprint", None),
    }


def check_same_dataset(output_dir: str, identity: dict[str, Any], resuming: bool, is_main_process: bool) -> None:
    """Record the run's data when it starts; refuse to resume it on other data (naming both)."""
    record = Path(output_dir) / _DATASET_RECORD
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None  # a run started before this record existed: nothing to compare with
    if resuming and isinstance(recorded, dict) and recorded.get("fingerprint") != identity["fingerprint"]:

        def describe(entry: dict[str, Any]) -> str:
            return f"{entry.get('dataset_name')!r} (split {entry.get('split')!r}, {entry.get('num_rows')} rows)"

        if recorded.get("location") == identity["location"] and recorded.get("split") == identity["split"]:
            what = (
                f"the data at {identity['location']!r} changed since this run started: {describe(recorded)} then, "
                f"{describe(identity)} now"
            )
        else:
            what = f"this run started on {describe(recorded)} and is now given {describe(identity)}"
        raise ValueError(
            f"--resume_from_checkpoint: {what}. Resuming would train the rest of the run on other data, mixing the "
            f"two. Resume with --dataset_name {recorded.get('dataset_name')} (its data as it was), or train on the "
            "new data in a new --output_dir (or add --overwrite_output_dir true instead of --resume_from_checkpoint). "
            f"If it is the same data, delete {record} to resume anyway."
        )
    if is_main_process and (not resuming or not isinstance(recorded, dict)):
        write_json(record, identity)


def check_before_loading(training_args: SSBConfig) -> None:
    """Settings that would fail only after the model has loaded (or after training, for the upload)."""
    if training_args.use_liger_kernel:
        import torch

        xpu = getattr(torch, "xpu", None)
        gpu = torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())
        if training_args.use_cpu or not gpu:
            raise ValueError(
                "--use_liger_kernel true needs a GPU (Liger's kernels are Triton GPU kernels), and this run has none "
                f"({'use_cpu is set' if training_args.use_cpu else 'no GPU is visible'}): drop --use_liger_kernel"
            )
    if training_args.push_to_hub:
        require_hub_access("--push_to_hub", "the trained model stays in --output_dir either way")


def main(script_args: TrainScriptArguments, training_args: SSBConfig, model_args: ModelConfig) -> SSBTrainer | None:
    """Load the soft-label data (checked first), the model, train, save (and merge / push if asked).

    Returns the trainer, or None when the run in --output_dir was already finished (nothing to do).
    """
    if not script_args.dataset_name:
        raise ValueError(
            "--dataset_name is required: a soft-label dataset directory written by `ssb-trl prepare` "
            "(e.g. outputs/demo/data after `make demo`) or a Hub dataset id"
        )
    check_before_loading(training_args)
    if script_args.merge_adapter and not model_args.use_peft:
        raise ValueError(
            "--merge_adapter true merges a LoRA adapter into its base model, but this run trains the full model "
            "(--use_peft is not set), so the model saved in --output_dir is already whole. Drop --merge_adapter, or "
            "add --use_peft true to train an adapter."
        )
    # Where to start (resume, refuse, start over) and the data's checks first: both fail before the model loads.
    with training_args.main_process_first(local=False, desc="checking --output_dir"):  # it deletes, the others see
        resume = decide_start(
            training_args.output_dir,
            resume_setting(training_args.resume_from_checkpoint),
            script_args.overwrite_output_dir,
            is_main_process=training_args.process_index == 0,
        )
    finished = finished_state(resume, training_args)
    output_dir = Path(training_args.output_dir)
    if finished is not None and _final_model_at(output_dir, finished["global_step"]):
        logger.warning(
            "The run in %s is already finished: %s is at step %d (the run ends at step %s), and its final model is "
            "saved there. Nothing to train; the model is left as it is. To train it further, raise --max_steps (or "
            "--num_train_epochs) and resume again.",
            output_dir,
            Path(resume).name,
            finished["global_step"],
            training_args.max_steps if training_args.max_steps > 0 else finished.get("max_steps"),
        )
        return None
    dataset, metadata = load_soft_label_dataset(script_args.dataset_name, split=script_args.dataset_train_split)
    check_same_dataset(
        training_args.output_dir,
        dataset_identity(script_args.dataset_name, script_args.dataset_train_split, dataset),
        resuming=resume is not None,
        is_main_process=training_args.process_index == 0,
    )
    logger.info(
        "Loaded %d soft-label rows from %s (teacher %s, K=%d, T=%s)",
        len(dataset),
        script_args.dataset_name,
        metadata.teacher_model,
        metadata.top_k,
        metadata.temperature,
    )
    eval_dataset = None
    if script_args.eval_fraction > 0:
        try:
            split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        except ValueError as exc:  # datasets: a split left empty
            raise ValueError(
                f"--eval_fraction {script_args.eval_fraction} of {len(dataset)} rows leaves no row for training or "
                f"none for evaluation ({exc}); pick a fraction that keeps rows on both sides, or 0 for no eval set"
            ) from exc
        dataset, eval_dataset = split["train"], split["test"]
    model_name = model_args.model_name_or_path or metadata.teacher_model
    model, tokenizer = load_model_and_tokenizer(
        model_name,
        dtype=model_args.dtype,
        device="cpu",  # the Trainer/accelerate places it; DeepSpeed ZeRO-3 partitions it
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )
    trainer = SSBTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        soft_label_metadata=metadata,
    )
    if finished is None:
        trainer.train(resume_from_checkpoint=resume)
    else:  # the run ended at its last checkpoint but was stopped before its final model was saved: save it
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            raise ValueError(
                f"the run in {output_dir} is finished ({resume} is at step {finished['global_step']}) but its final "
                f"model was not saved; the weights are in {resume}. Nothing to train: use that checkpoint (or rerun "
                "without DeepSpeed/FSDP to save it in --output_dir)."
            )
        logger.warning(
            "The run in %s is already finished (%s is at step %d) but its final model was not saved: saving it from "
            "that checkpoint, without training.",
            output_dir,
            resume,
            finished["global_step"],
        )
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, _TRAINER_STATE))
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():  # the log history, for plots (ssb_trl.plotting.plot_training_curves)
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
    if script_args.merge_adapter and model_args.use_peft and trainer.is_world_process_zero():
        merged_dir = os.path.join(training_args.output_dir, "merged")
        trainer.model.merge_and_unload().save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        logger.info("Saved the merged model to %s", merged_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((TrainScriptArguments, SSBConfig, ModelConfig), prog=prog)


if __name__ == "__main__":
    configure_logging()
    run_script(main, make_parser())

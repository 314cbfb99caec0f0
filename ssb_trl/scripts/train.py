"""Train a model with SSB on a soft-label dataset (made by `ssb-trl prepare`).

    ssb-trl train --config recipes/configs/demo.yaml --dataset_name outputs/demo/data
    ssb-trl train --config recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml --accelerate_config zero3
    accelerate launch --config_file zero3.yaml \\
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
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers.hf_argparser import string_to_bool
from trl import ModelConfig, TrlParser, get_peft_config

from ssb_trl import SSBConfig, SSBTrainer, load_soft_label_dataset
from ssb_trl.cli import run_script
from ssb_trl.contract import METADATA_FILENAME, SoftLabelError, SoftLabelMetadata, read_metadata_file
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts import configure_logging
from ssb_trl.storage import load_rows

logger = logging.getLogger("ssb_trl.train")


@dataclass
class TrainScriptArguments:
    """Where the soft-label data comes from and how the result is saved."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Soft-label dataset: a directory written by `ssb-trl prepare`, or a Hub dataset id."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "Configuration (subset) of a Hub dataset, or of a folder laid out like one (its README lists "
            "`configs`): the `name` of datasets.load_dataset, as in TRL's ScriptArguments."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "Split to evaluate on, a set apart from training (TRL's ScriptArguments name). TRL defaults it to "
            "'test' and reads it when eval_strategy is not 'no'; here it is read when given, so that data without a "
            "test split trains as before. Not with --eval_fraction."
        },
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this fraction of the training rows for an eval loss (0 = no held-out set). Not with "
            "--dataset_test_split."
        },
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
            logger.info("Resuming from %s (the latest checkpoint in %s)", checkpoints[-1], folder)
            return True
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


def load_split(name: str, split: str, config: str | None = None) -> tuple[Dataset, SoftLabelMetadata]:
    """One split of a soft-label dataset with its metadata; `config` picks a configuration (subset) of a Hub
    dataset, or of a folder laid out like one.

    `load_soft_label_dataset` takes no configuration (it lives in ssb_trl.contract, being restructured: it should
    take this parameter there). A configuration's metadata is its own `<config>/ssb_metadata.json` when the data
    has one (configurations may differ in K or T), else the dataset's.
    """
    if config is None:
        return load_soft_label_dataset(name, split=split)
    path = Path(name).expanduser()
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        raise ValueError(
            f"--dataset_config {config!r}: {name!r} was saved with save_to_disk, which has splits but no "
            "configurations; drop --dataset_config (and pick a split with --dataset_train_split / --dataset_test_split)"
        )
    rows = load_rows(name, split=split, config_name=config)
    metadata_file = None
    for candidate in (f"{config}/{METADATA_FILENAME}", METADATA_FILENAME):
        if path.is_dir():
            metadata_file = path / candidate if (path / candidate).is_file() else None
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                metadata_file = hf_hub_download(name, candidate, repo_type="dataset")
            except EntryNotFoundError:
                metadata_file = None
        if metadata_file is not None:
            break
    if metadata_file is None:
        raise SoftLabelError(
            f"{name!r} (configuration {config!r}) has no soft-label metadata: neither {config}/{METADATA_FILENAME} "
            f"nor {METADATA_FILENAME}. Add the file written with the data (ssb_trl.save_soft_label_dataset)."
        )
    metadata = read_metadata_file(metadata_file)
    rows.info.description = metadata.to_description()
    return rows, metadata


def eval_set(
    script_args: TrainScriptArguments, dataset: Dataset, training_args: SSBConfig
) -> tuple[Dataset, Dataset | None]:
    """(train, eval): the eval set is --dataset_test_split, or --eval_fraction of the training rows, or none."""
    if script_args.dataset_test_split is not None and script_args.eval_fraction > 0:
        raise ValueError(
            f"--dataset_test_split {script_args.dataset_test_split!r} and --eval_fraction "
            f"{script_args.eval_fraction} both make an eval set: pass one of them"
        )
    if script_args.dataset_test_split is not None:
        path = Path(script_args.dataset_name).expanduser()
        if path.is_file() or ((path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file()):
            # Loaders return such data whatever split is asked: the eval set would be the training set itself.
            raise ValueError(
                f"--dataset_test_split {script_args.dataset_test_split!r}: {script_args.dataset_name!r} holds one "
                "split, the training data. Hold out rows with --eval_fraction F instead, or save a DatasetDict with a "
                f"{script_args.dataset_test_split!r} split"
            )
        evaluation, _ = load_split(
            script_args.dataset_name, script_args.dataset_test_split, script_args.dataset_config
        )
        return dataset, evaluation
    if script_args.eval_fraction > 0:
        split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        return split["train"], split["test"]
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy != "no":
        raise ValueError(
            f"--eval_strategy {strategy} evaluates during training, but there is no eval set: pass "
            "--dataset_test_split NAME (a split of --dataset_name) or --eval_fraction F, or --eval_strategy no"
        )
    return dataset, None


def main(script_args: TrainScriptArguments, training_args: SSBConfig, model_args: ModelConfig) -> SSBTrainer:
    """Load the soft-label data (checked first), the model, train, save (and merge / push if asked)."""
    if not script_args.dataset_name:
        raise ValueError(
            "--dataset_name is required: a soft-label dataset directory written by `ssb-trl prepare` "
            "(e.g. outputs/demo/data after `make demo`) or a Hub dataset id"
        )
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
    dataset, metadata = load_split(
        script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config
    )
    logger.info(
        "Loaded %d soft-label rows from %s (teacher %s, K=%d, T=%s)",
        len(dataset),
        script_args.dataset_name,
        metadata.teacher_model,
        metadata.top_k,
        metadata.temperature,
    )
    dataset, eval_dataset = eval_set(script_args, dataset, training_args)
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
    trainer.train(resume_from_checkpoint=resume)
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

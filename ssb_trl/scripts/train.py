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

Resuming takes the newest *complete* checkpoint (:func:`ssb_trl.checkpoints.checkpoint_problem`): one cut short by a crash or a
kill while it was written is named in a warning and skipped. A run whose checkpoint has reached the run's end
(`--max_steps`, or the epochs it was started with) is finished: relaunched, it says so and trains nothing. The
data a run trains on is recorded in `<output_dir>/ssb_train_dataset.json` when it starts; resuming it on other
data is refused.
"""

from __future__ import annotations

import logging
import os
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import TrainerState
from transformers.hf_argparser import string_to_bool
from trl import ModelConfig, TrlParser, get_peft_config

from ssb_trl import SSBConfig, SSBTrainer, load_soft_label_dataset
from ssb_trl.checkpoints import (
    TRAINER_STATE,
    check_same_dataset,
    dataset_identity,
    decide_start,
    final_model_at,
    finished_state,
)
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts.common import configure_logging, run_script
from ssb_trl.storage import require_hub_access

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

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(
                f"--eval_fraction {self.eval_fraction} is not a fraction of the rows: pass a number in [0, 1) (0.1 holds "
                "out 10% of the rows for an eval loss; 0 = no eval set)"
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
        evaluation, _ = load_soft_label_dataset(
            script_args.dataset_name, split=script_args.dataset_test_split, config=script_args.dataset_config
        )
        return dataset, evaluation
    if script_args.eval_fraction > 0:
        try:
            split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        except ValueError as exc:  # datasets: a split left empty
            raise ValueError(
                f"--eval_fraction {script_args.eval_fraction} of {len(dataset)} rows leaves no row for training or "
                f"none for evaluation ({exc}); pick a fraction that keeps rows on both sides, or 0 for no eval set"
            ) from exc
        return split["train"], split["test"]
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy != "no":
        raise ValueError(
            f"--eval_strategy {strategy} evaluates during training, but there is no eval set: pass "
            "--dataset_test_split NAME (a split of --dataset_name) or --eval_fraction F, or --eval_strategy no"
        )
    return dataset, None


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
    if finished is not None and final_model_at(output_dir, finished["global_step"]):
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
    dataset, metadata = load_soft_label_dataset(
        script_args.dataset_name, split=script_args.dataset_train_split, config=script_args.dataset_config
    )
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
        trainer.state = TrainerState.load_from_json(os.path.join(resume, TRAINER_STATE))
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

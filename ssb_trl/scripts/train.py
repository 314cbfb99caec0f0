"""Train a model with SSB on a soft-label dataset (made by `ssb-trl prepare`).

    ssb-trl train --config recipes/configs/demo.yaml --dataset_name outputs/demo/data
    ssb-trl train --config recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml --accelerate_config deepspeed_zero3
    accelerate launch --config_file ssb_trl/accelerate_configs/deepspeed_zero3.yaml \\
        -m ssb_trl.scripts.train --config recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml

Every `SSBConfig` (= `SFTConfig` + loss settings) and `ModelConfig` field is a flag; `--config` reads a
YAML whose keys are those flags (CLI flags override it; an unknown key is an error). LoRA comes from
`ModelConfig` (`--use_peft --lora_r 32 ...`). `--ce_weight 1 --kd_weight 0` trains the hard-label
baseline on the same teacher answers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ssb_trl import SSBConfig, SSBTrainer, load_soft_label_dataset
from ssb_trl.cli import run_script
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts import configure_logging

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


def main(script_args: TrainScriptArguments, training_args: SSBConfig, model_args: ModelConfig) -> SSBTrainer:
    """Load the soft-label data (checked first), the model, train, save (and merge / push if asked)."""
    if not script_args.dataset_name:
        raise ValueError(
            "--dataset_name is required: a soft-label dataset directory written by `ssb-trl prepare` "
            "(e.g. outputs/demo/data after `make demo`) or a Hub dataset id"
        )
    # Data and its checks first: a wrong dataset fails before the model is loaded.
    dataset, metadata = load_soft_label_dataset(script_args.dataset_name, split=script_args.dataset_train_split)
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
        split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
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
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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

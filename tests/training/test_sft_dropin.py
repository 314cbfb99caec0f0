"""SSBTrainer drops in where SFTTrainer stands: a typical TRL SFT script runs with only the classes swapped.

The script below is what a TRL user already has (LoRA through `peft_config`, an eval set, `compute_metrics`
with or without `preprocess_logits_for_metrics`, a callback). It runs once with SFTTrainer/SFTConfig and once
with SSBTrainer/SSBConfig on the same soft-label dataset (SFTTrainer reads its `input_ids` and `completion_mask`
and ignores the soft labels), and the metrics must see the same predictions at the same positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from ssb_trl import SSBConfig, SSBTrainer
from tests.helpers import build_soft_label_dataset, make_tiny_model


class RecordEvaluations(TrainerCallback):
    """A user's callback: keeps every evaluation's metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics.append(dict(metrics or {}))


def sft_script(trainer_class, config_class, train, evaluation, tokenizer, output_dir, with_preprocess: bool):
    """An unchanged SFT script: only `trainer_class` and `config_class` differ between the two runs."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def preprocess_logits_for_metrics(logits, labels):
        return logits.argmax(dim=-1)  # keeps [batch, seq] ids instead of the logits, as TRL/transformers examples do

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        if not with_preprocess:
            predictions = np.argmax(predictions, axis=-1)
        predictions, labels = predictions[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        mask = labels != -100
        seen.append((predictions[mask], labels[mask]))
        return {"token_accuracy": float((predictions[mask] == labels[mask]).mean())}

    callback = RecordEvaluations()
    args = config_class(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=3,  # 8 rows: batches of unequal widths, padded by the loop
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = trainer_class(
        model=make_tiny_model(seed=0),
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if with_preprocess else None,
        callbacks=[callback],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = trainer.evaluate()  # the LoRA adapter starts at zero: both trainers evaluate the same model here
    trainer.train()
    return before, seen, callback.metrics


@pytest.mark.parametrize("with_preprocess", [False, True], ids=["argmax-in-compute_metrics", "preprocess_logits"])
def test_an_sft_script_evaluates_unchanged_with_ssb(tmp_path, tokenizer, with_preprocess):
    dataset, _ = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=8, top_k=8)
    sft_before, sft_seen, _ = sft_script(
        SFTTrainer, SFTConfig, dataset, dataset, tokenizer, tmp_path / "sft", with_preprocess
    )
    ssb_before, ssb_seen, ssb_evaluations = sft_script(
        SSBTrainer, SSBConfig, dataset, dataset, tokenizer, tmp_path / "ssb", with_preprocess
    )
    # The same model before training: the same predictions and labels at the same positions, the same metric.
    np.testing.assert_array_equal(ssb_seen[0][0], sft_seen[0][0])
    np.testing.assert_array_equal(ssb_seen[0][1], sft_seen[0][1])
    assert len(ssb_seen[0][1]) == sum(sum(row["completion_mask"][1:]) for row in dataset)
    assert ssb_before["eval_token_accuracy"] == sft_before["eval_token_accuracy"]
    assert "eval_kd_loss" in ssb_before
    # The callback saw each step's evaluation, with the user's metric beside the SSB ones.
    assert [e["epoch"] > 0 for e in ssb_evaluations] == [False, True, True]
    assert all({"eval_token_accuracy", "eval_kd_loss", "eval_loss"} <= set(e) for e in ssb_evaluations)

"""SSBTrainer's evaluation and prediction: `evaluate`, `predict`, their loop and step, and the SSB metrics.

A mixin over `trl.SFTTrainer`, kept apart from training (`ssb_trl.trainer`). It relies on what SSBTrainer
sets up: `_ready_dataset` (checks and truncates a dataset passed at call time), `compute_loss` (which
records the SSB sums of the batch in `_ssb_sums[mode]`).
"""

from __future__ import annotations

from typing import Any

import torch

from ssb_trl.trainer_data import require_dataset


def ssb_metric_values(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Per-answer-token means of the recorded sums: kd_loss, ce_loss, top1_agreement, mean_answer_length."""
    if sums["tokens"] <= 0:
        return {}
    return {
        f"{prefix}kd_loss": sums["kd"] / sums["tokens"],
        f"{prefix}ce_loss": sums["ce"] / sums["tokens"],
        f"{prefix}top1_agreement": sums["agree"] / sums["tokens"],
        f"{prefix}mean_answer_length": sums["tokens"] / max(sums["sequences"], 1),
    }


class SoftLabelPredictionMixin:
    """Evaluation and prediction on soft-label datasets, with the SSB metrics under the loop's own prefix.

    Predictions are what SFTTrainer gives, so an SFT `compute_metrics` runs unchanged: `EvalPrediction.predictions`
    are the student's logits [batch, seq, vocab] (`predictions[:, t]` predicts `label_ids[:, t + 1]`) and
    `label_ids` the answer tokens (-100 elsewhere), and `preprocess_logits_for_metrics(logits, labels)` runs on each
    batch as in Trainer. Why logits and not the argmax ids the loss computes anyway: a script written for
    SFTTrainer does `np.argmax(logits, -1)` on them, which on [batch, seq] ids fails with an IndexError at the
    first evaluation, after training ran. The logits are built only when predictions are wanted (a
    `compute_metrics`, or `predict`), one batch at a time, as SFTTrainer does; Trainer then keeps them all for
    `compute_metrics`, which for a large eval set is the memory SFT users avoid with
    `preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1)` (and `eval_accumulation_steps`).
    SFTTrainer 1.16 recomputes them with a second forward and deprecates them for TRL 2.0; here they come from the
    hidden states the loss already has (no second forward), and SSBTrainer follows TRL when it drops them.
    """

    _ssb_sums: dict[str, Any]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if isinstance(eval_dataset, dict):  # Trainer evaluates each named set through this method again
            for name, dataset in eval_dataset.items():
                require_dataset(dataset, f"eval_dataset[{name!r}]")
        elif eval_dataset is not None and not isinstance(eval_dataset, str):  # a str names one of self.eval_dataset
            require_dataset(eval_dataset, "eval_dataset")
            eval_dataset = self._ready_dataset(eval_dataset, "eval_dataset")
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """As SFTTrainer.predict: predictions are the student's logits [rows, seq, vocab], or what
        `preprocess_logits_for_metrics` makes of them; metrics add the SSB ones under `test_`."""
        require_dataset(test_dataset, "test_dataset")
        test_dataset = self._ready_dataset(test_dataset, "test_dataset")
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        """Trainer's loop, plus the SSB metrics of exactly this loop under its `metric_key_prefix`."""
        self._ssb_sums["eval"].clear()
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix=metric_key_prefix
        )
        output.metrics.update(ssb_metric_values(self._ssb_sums["eval"], f"{metric_key_prefix}_"))
        self._ssb_sums["eval"].clear()
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """(loss, logits [batch, seq, vocab], labels [batch, seq]) as Trainer's; no logits when only the loss is
        wanted (the SSB loss never needs them)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if prediction_loss_only:
                return self.compute_loss(model, inputs).detach(), None, None
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        return loss.detach(), outputs.logits, inputs["labels"]

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

    `compute_metrics` gets `EvalPrediction(predictions, label_ids)`: `predictions` [batch, seq] are the
    student's argmax ids (`predictions[:, t]` predicts `label_ids[:, t + 1]`, -100 where that is not an answer
    token), from the loss's own chunked argmax; `label_ids` the answer tokens (-100 elsewhere).
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
        """As Trainer.predict: predictions are the student's argmax ids on answer tokens (see the class docs)."""
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
        """(loss, argmax ids [batch, seq], labels [batch, seq]): argmax at t predicts labels at t + 1, -100 elsewhere."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        labels = inputs["labels"]
        predictions = torch.full_like(labels, -100)
        predictions[:, :-1][labels[:, 1:] != -100] = outputs.predictions.to(labels.device)
        return loss.detach(), predictions, labels

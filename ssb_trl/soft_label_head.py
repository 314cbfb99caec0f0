"""Route the soft-label loss through `model.forward`, so DDP, DeepSpeed and PEFT wrappers see a normal call.

`model(input_ids, attention_mask, labels=..., ssb_soft_labels=(ids, logprobs, spec))` runs the
backbone, keeps the hidden states that predict answer tokens (labels != -100 after the shift) and
hands them to the chunked sparse loss. Without `ssb_soft_labels` the forward is the original one,
so generation is unchanged. Patch the base model before or after PEFT wraps it (on the PEFT model's
`get_base_model()`): PEFT passes unknown keyword arguments through.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .loss import DistillationLossSpec, sparse_distillation_loss


@dataclass
class SoftLabelOutput(ModelOutput):
    """`loss_sum`: differentiable loss summed over answer tokens; `stats`: [kd_sum, ce_sum, top1_agreements]."""

    loss_sum: torch.Tensor | None = None
    stats: torch.Tensor | None = None
    num_answer_tokens: torch.Tensor | None = None


def _check_supported(model: PreTrainedModel) -> None:
    config = model.config.get_text_config()
    for attribute in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        value = getattr(config, attribute, None)
        if value not in (None, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} transforms its logits ({attribute}={value}); the soft-label loss projects "
                "hidden states with the plain LM head and would disagree with the teacher. Not supported yet."
            )


def add_soft_label_head(model: PreTrainedModel) -> None:
    """Patch `model.forward` (in place) to accept `ssb_soft_labels`."""
    _check_supported(model)
    if getattr(model, "_ssb_soft_label_head", False):
        return
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, ssb_soft_labels=None, **kwargs):
        if ssb_soft_labels is None:
            return original_forward(*args, **kwargs)
        teacher_ids, teacher_logprobs, spec = ssb_soft_labels
        assert isinstance(spec, DistillationLossSpec)
        labels = kwargs.pop("labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        shifted = labels[:, 1:]
        answer = shifted != -100
        if int(answer.sum()) != teacher_ids.shape[0]:
            raise ValueError(
                f"the batch has {int(answer.sum())} answer tokens but {teacher_ids.shape[0]} soft-label rows; "
                "the collator or dataset misaligned them (was input_ids truncated without its soft labels?)."
            )
        lm_head = self.get_output_embeddings()
        with maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
            loss_sum, stats = sparse_distillation_loss(
                hidden[answer].to(lm_head.weight.device),
                lm_head.weight,
                lm_head.bias,
                teacher_ids.to(lm_head.weight.device),
                teacher_logprobs.to(lm_head.weight.device),
                shifted[answer].to(lm_head.weight.device),
                spec,
            )
        return SoftLabelOutput(loss_sum=loss_sum, stats=stats, num_answer_tokens=answer.sum())

    model.forward = types.MethodType(forward, model)
    model._ssb_soft_label_head = True

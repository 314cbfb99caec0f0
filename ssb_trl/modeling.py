"""Private: patch `model.forward` so the soft-label loss runs inside it (DDP, DeepSpeed and PEFT see a normal call).

`model(input_ids=..., attention_mask=..., labels=..., teacher_topk_ids=..., teacher_topk_logprobs=...,
ssb_loss_spec=...)` runs the backbone, keeps the hidden states that predict answer tokens (labels != -100
after the shift) and hands them to the chunked sparse loss (`ssb_trl.loss`). `ssb_return_logits=True` also
projects every position to the vocabulary (the [batch, seq, vocab] logits SFTTrainer hands to
`compute_metrics`); training never asks for them. Without `ssb_loss_spec` the forward is the original one, so
generation is unchanged. Patch the base model (under PEFT, the PEFT model's
`get_base_model()`): PEFT passes unknown keyword arguments through.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel
from transformers.utils import ModelOutput
from trl.trainer.utils import maybe_gather_lm_head_ctx

from ssb_trl.loss import DistillationLossSpec, sparse_distillation_loss
from ssb_trl.soft_labels.checks import check_batch_alignment


@dataclass
class SoftLabelOutput(ModelOutput):
    """`loss_sum`: differentiable loss summed over answer tokens; `stats`: [kd_sum, ce_sum, top1_agreements];
    `predictions`: the student's argmax id per answer token, in the order of the answer positions (row-major).
    `logits`: [batch, seq, vocab], as the unpatched forward returns them, only when asked (evaluation with
    predictions); None otherwise, so training never builds them."""

    loss_sum: torch.Tensor | None = None
    stats: torch.Tensor | None = None
    num_answer_tokens: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def check_supported(model: PreTrainedModel) -> None:
    """Refuse models whose logits are not `lm_head(hidden)`: the loss projects hidden states itself."""
    config = model.config.get_text_config()
    for attribute in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        value = getattr(config, attribute, None)
        if value not in (None, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} transforms its logits ({attribute}={value}); the soft-label loss projects "
                "hidden states with the plain LM head and would disagree with the teacher. Not supported yet."
            )
    if isinstance(model.get_output_embeddings(), BaseTunerLayer):
        raise ValueError(
            "A PEFT adapter on the LM head (`lm_head` in target_modules) is not supported: the soft-label loss "
            "projects hidden states with `lm_head.weight` directly, so the adapter would be ignored and never "
            "trained. Remove the LM head from `target_modules`."
        )


def patch_forward_with_soft_label_loss(model: PreTrainedModel) -> None:
    """Patch `model.forward` (in place) to compute the soft-label loss when given `ssb_loss_spec`."""
    check_supported(model)
    if getattr(model, "_ssb_forward_patched", False):
        return
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self,
        *args,
        teacher_topk_ids: torch.Tensor | None = None,
        teacher_topk_logprobs: torch.Tensor | None = None,
        ssb_loss_spec: DistillationLossSpec | None = None,
        ssb_return_logits: bool = False,
        **kwargs,
    ):
        if ssb_loss_spec is None:
            return original_forward(*args, **kwargs)
        if teacher_topk_ids is None or teacher_topk_logprobs is None:
            raise ValueError("the soft-label loss needs teacher_topk_ids and teacher_topk_logprobs")
        labels = kwargs.pop("labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        last_hidden = self.base_model(*args, **kwargs).last_hidden_state
        hidden = last_hidden[:, :-1]
        shifted = labels[:, 1:]
        answer = shifted != -100
        check_batch_alignment(int(answer.sum()), teacher_topk_ids.shape[0])
        lm_head = self.get_output_embeddings()
        device = lm_head.weight.device
        with maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
            loss_sum, stats, predictions = sparse_distillation_loss(
                hidden[answer].to(device),
                lm_head.weight,
                lm_head.bias,
                teacher_topk_ids.to(device),
                teacher_topk_logprobs.to(device),
                shifted[answer].to(device),
                ssb_loss_spec,
                return_predictions=True,
            )
            # The unpatched forward's projection (check_supported refuses models that transform their logits).
            logits = F.linear(last_hidden.to(device), lm_head.weight, lm_head.bias) if ssb_return_logits else None
        return SoftLabelOutput(
            loss_sum=loss_sum, stats=stats, num_answer_tokens=answer.sum(), predictions=predictions, logits=logits
        )

    model.forward = types.MethodType(forward, model)
    model._ssb_forward_patched = True

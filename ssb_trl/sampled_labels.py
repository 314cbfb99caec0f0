"""Sampled soft labels: an unbiased sparse estimate of the teacher's full distribution.

Top-K soft labels drop the tail's shape, so their gradient is biased however large K is. Sparse Logit
Sampling (Anshumann et al., ACL 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs",
arXiv 2503.16870) instead draws N tokens per position from the teacher's distribution p (at temperature T)
and stores the empirical distribution p_hat = counts / N over the distinct drawn tokens. E[p_hat] = p, and the
forward-KL gradient with respect to the student's logits, q - p_hat, is linear in p_hat, so its expectation
over draws is the dense gradient q - p (proposal = p, so every importance weight is 1 and the counts suffice).

The rows fit the one contract: K = N entries per token (the metadata's `top_k` is N), the drawn ids by
count (most probable first) with log(count / N), then padding ids (never drawn) at log-prob PAD_LOGPROB, whose
probability (e^-80; 1.2e-7 once stored as compact uint8 codes, whose floor is -15.94) is nil next to 1 / N. The
stored mass is 1, so the derived tail bucket is empty and `ssb_trl.loss` computes q - p_hat over the whole
vocabulary. Stored rounding must not leak mass into the tail: the compact 8-bit codes of a sampled row round
every probability up (`encode_logprobs(..., round_up=True)`), so its mass is >= 1, and the loss scales a stored
mass above 1 back to 1 (float16 rounding leaves at most ~0.1% in the tail). Draws are reproducible: the
caller passes a generator seeded per row (data preparation seeds it from the run seed and the question id).

Data preparation writes these rows with `--soft_label_mode sampled --soft_label_draws N`
(:func:`ssb_trl.data.teacher.extract_soft_labels`); the dataset metadata records the mode and N
(`SoftLabelMetadata.soft_label_mode`, `.soft_label_draws`, format version 3).
"""

from __future__ import annotations

import torch

PAD_LOGPROB = -80.0
"""Log-prob of the padding entries (tokens not drawn): finite for the contract's checks, nil in the loss."""


def sample_soft_labels(
    logprobs: torch.Tensor, num_draws: int, top_k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] teacher log-probs at T -> (ids [n, top_k] long, log-probs [n, top_k] float32) of N draws each.

    `top_k` must be >= `num_draws` so that every drawn token is kept (dropping one would bias the estimate).
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}.")
    if not num_draws <= top_k <= logprobs.shape[-1]:
        raise ValueError(
            f"top_k must lie in [num_draws, vocabulary] = [{num_draws}, {logprobs.shape[-1]}], got {top_k}: "
            "every drawn token must be stored, or the estimate is biased."
        )
    probs = logprobs.float().exp()
    draws = torch.multinomial(probs, num_draws, replacement=True, generator=generator)
    counts = torch.zeros_like(probs).scatter_add_(-1, draws, torch.ones_like(draws, dtype=probs.dtype))
    values, ids = counts.topk(top_k, dim=-1)  # drawn tokens by count, then distinct never-drawn ids
    stored = torch.where(values > 0, (values / num_draws).log(), torch.full_like(values, PAD_LOGPROB))
    return ids, stored

"""Sparse soft-label distillation loss, chunked over answer tokens.

The teacher is stored as its top-K log-probs (plus an implied tail bucket holding the rest of the
mass). The loss compares teacher and student on that coarse (K + 1)-bucket distribution:

    teacher:  P = [p_1 .. p_K, 1 - sum(p)]             (from the dataset)
    student:  Q = [q(id_1) .. q(id_K), 1 - sum(q(id))]  (q = softmax(logits / T) over the full vocab)
    loss per answer token = T^2 * D(P, Q)

D is a generalised Jensen-Shannon divergence as in TRL's GKD: beta = 0 is forward KL(P || Q),
beta = 1 is reverse KL(Q || P). Without the tail bucket both sides are renormalised over the K ids.
A stored sum(p) above 1 (rounding) is scaled back to 1. Sampled soft labels (`ssb_trl.soft_labels.codec`) store
counts / N with sum(p) = 1: their tail is empty and the gradient is q - p_hat over the whole vocabulary.

Memory: the student's [tokens, vocab] logits are never built for the whole batch. The answer
positions' hidden states are projected chunk by chunk; each chunk's gradient with respect to the
hidden states and the LM head is computed right away (one matmul forward, two backward, like
Liger's fused linear cross-entropy) and the chunk's logits are freed. The divergence itself is
differentiated by autograd on the small [chunk, K + 1] coarse distribution, then chained by hand
to the vocabulary (see `_chunk_loss_and_grad`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Student tail log-probs below this are clamped (their gradient is then zero): with K = vocab the
# tail is empty and log(0) would poison the loss.
_MIN_LOG_PROB = -80.0
# Floor for the teacher tail probability (fp16 top-K mass can round to >= 1).
_MIN_TAIL_PROB = 1e-30


@dataclass(frozen=True)
class DistillationLossSpec:
    """What to compute: the settings of `SSBConfig` that shape the loss."""

    temperature: float = 2.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    beta: float = 0.0
    use_tail_bucket: bool = True
    chunk_size: int | None = None  # answer tokens per chunk; None = sized from the vocabulary

    def __post_init__(self):
        for name in ("temperature", "kd_weight", "ce_weight", "beta"):
            value = getattr(self, name)
            if not math.isfinite(value):  # NaN passes every `<` check below and would train NaN weights
                raise ValueError(f"{name} must be a finite number, got {value}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {self.beta}.")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise ValueError(
                f"kd_weight ({self.kd_weight}) and ce_weight ({self.ce_weight}) must be >= 0 and not both 0."
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"loss chunk size must be >= 1 token, got {self.chunk_size}.")


def auto_chunk_size(vocab_size: int, max_elements: int = 2**26) -> int:
    """Answer tokens per chunk so one fp32 [chunk, vocab] tile stays near 256 MB."""
    return max(16, max_elements // vocab_size)


def teacher_coarse_log_probs(teacher_logprobs: torch.Tensor, use_tail_bucket: bool) -> torch.Tensor:
    """[N, K] teacher top-K log-probs -> [N, K + 1] coarse log-probs (last = tail), or [N, K] renormalised."""
    teacher_logprobs = teacher_logprobs.float()
    if not use_tail_bucket:
        return torch.log_softmax(teacher_logprobs, dim=-1)
    mass = teacher_logprobs.exp().sum(-1, keepdim=True)
    # A stored mass above 1 is rounding (float16, or the 8-bit codes of sampled soft labels, which round up): scale
    # it back to 1 so the target is a distribution; the tail bucket is then empty.
    teacher_logprobs = teacher_logprobs - mass.log().clamp(min=0.0)
    tail = (1.0 - mass).clamp(min=_MIN_TAIL_PROB)
    return torch.cat([teacher_logprobs, tail.log()], dim=-1)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row divergence between two distributions given as log-probs over the same buckets.

    beta = 0: KL(teacher || student); beta = 1: KL(student || teacher); else the generalised JSD
    with mixture M = beta * teacher + (1 - beta) * student (the convention of TRL's GKD trainer).
    """
    p_t, p_s = teacher_logp.exp(), student_logp.exp()
    if beta == 0.0:
        return (p_t * (teacher_logp - student_logp)).sum(-1)
    if beta == 1.0:
        return (p_s * (student_logp - teacher_logp)).sum(-1)
    log_m = torch.logsumexp(
        torch.stack([student_logp + torch.log1p(torch.tensor(-beta)), teacher_logp + torch.log(torch.tensor(beta))]),
        dim=0,
    )
    kl_t = (p_t * (teacher_logp - log_m)).sum(-1)
    kl_s = (p_s * (student_logp - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def _logits_fp32(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden @ weight.T (+ bias) as fp32, straight from the GEMM on CUDA (no bf16 round trip)."""
    z = None
    if hidden.device.type == "cuda" and hidden.dtype in (torch.float16, torch.bfloat16):
        try:
            z = torch.mm(hidden, weight.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch < 2.8
            z = None
    if z is None:
        z = torch.mm(hidden, weight.t()).float()
    if bias is not None:
        z += bias.float()
    return z


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with an fp32 accumulator, without rounding the product to bf16 first."""
    if acc.device.type == "cuda" and a.dtype in (torch.float16, torch.bfloat16):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _log_sum_pow(e: torch.Tensor, t: float, sum_e: torch.Tensor) -> torch.Tensor:
    """log(sum(e ** t)) per row, where e = exp((z - max) / t): the log-partition at T = 1, minus the max.

    Each row's largest e is 1, so the sum lies in [1, vocab]. For t >= 1 the t-norm (sum e^t)^(1/t) cannot
    overflow; for t < 1 it can (a flat 20k vocabulary at t = 0.1 gives 20000^10), so there the powers are
    summed directly, a few rows at a time to keep the temporary small.
    """
    if t == 1.0:
        return sum_e.log()
    if t > 1.0:
        return t * torch.linalg.vector_norm(e, ord=t, dim=-1).log()
    return torch.cat([rows.pow(t).sum(-1) for rows in e.split(64)]).log()


def _chunk_loss_and_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    targets: torch.Tensor,
    spec: DistillationLossSpec,
    need_grad: bool,
):
    """Loss sums, stats, the student's argmax ids and d(loss)/d(logits) for one chunk of answer tokens.

    One fp32 [chunk, vocab] buffer is reused throughout (logits -> exp -> gradient) so that the chunk
    costs few passes over memory. With e = exp((z - max) / T), p = e / sum(e):
      student top-K log-probs = (z_topk - max) / T - log sum(e)
      student tail mass       = sum of e outside the top-K / sum(e)   (summed directly: exact when tiny)
      CE at T = 1             = max + log sum(e^T) - z_target     (see `_log_sum_pow`)
    """
    t = spec.temperature
    z = _logits_fp32(hidden, weight, bias)
    z_max, student_top1 = z.max(dim=-1)
    agree = (student_top1 == ids[:, 0]).sum()
    topk_z = z.gather(-1, ids)
    target_z = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    e = z.sub_(z_max.unsqueeze(-1)).mul_(1.0 / t).exp_()
    topk_e = e.gather(-1, ids)
    e.scatter_(-1, ids, 0.0)
    tail_e = e.sum(-1)
    e.scatter_(-1, ids, topk_e)
    sum_e = tail_e + topk_e.sum(-1)
    log_sum_e = sum_e.log()
    ce = (z_max + _log_sum_pow(e, t, sum_e) - target_z).sum()

    topk_logp = (topk_z - z_max.unsqueeze(-1)) / t - log_sum_e.unsqueeze(-1)
    if spec.use_tail_bucket:
        # log(1 - S) for the student's top-K mass S: from S itself when the tail is large (the difference of two
        # big logs would lose the digits that matter at high T), from the directly summed tail when it is tiny
        # (-inf when it underflows; clamped, with zero gradient, below).
        topk_mass = topk_e.sum(-1) / sum_e
        log_tail = torch.where(topk_mass < 0.5, torch.log1p(-topk_mass), tail_e.log() - log_sum_e)
        coarse = torch.cat([topk_logp, log_tail.clamp(min=_MIN_LOG_PROB).unsqueeze(-1)], dim=-1)
    else:
        log_tail = None
        coarse = torch.log_softmax(topk_logp, dim=-1)
    teacher = teacher_coarse_log_probs(teacher_logprobs, spec.use_tail_bucket)
    coarse = coarse.detach().requires_grad_(need_grad)
    with torch.enable_grad():
        kd = generalized_jsd(coarse, teacher, spec.beta).sum() * t * t
        grad_coarse = torch.autograd.grad(kd, coarse)[0] if need_grad else None
    if not need_grad:
        return kd.detach(), ce, agree, student_top1, None

    grad_ce = None
    if spec.ce_weight > 0:  # softmax(z) - onehot(target), with softmax(z) = e^T / sum(e^T)
        grad_ce = e.pow(t)
        grad_ce.div_(grad_ce.sum(-1, keepdim=True))
        grad_ce.scatter_add_(-1, targets.unsqueeze(-1), -torch.ones_like(target_z).unsqueeze(-1))
        grad_ce.mul_(spec.ce_weight)
    if spec.kd_weight == 0:
        return kd.detach(), ce, agree, student_top1, grad_ce
    # Chain rule from the coarse log-probs to z / T, with p = softmax(z / T), S = top-K mass of p,
    # g_i = dL/dlog q_i and g_t = dL/dlog q_tail:
    #   v outside the top-K: dL/d(z_v / T) = p_v * (-sum_i g_i + g_t * S / (1 - S))
    #   v = id_i:            the same, plus g_i - p_v * g_t / (1 - S)
    # Without the tail (log_softmax over the K ids) only the ids get g_i - q_i * sum_j g_j.
    # And dL/dz = (kd_weight / T) * dL/d(z / T).
    coarse = coarse.detach()
    factor = spec.kd_weight / t
    if log_tail is None:
        g = grad_coarse - coarse.exp() * grad_coarse.sum(-1, keepdim=True)
        grad = e.zero_().scatter_(-1, ids, g * factor)
    else:
        g_topk, g_tail = grad_coarse[:, :-1], grad_coarse[:, -1]
        g_tail = torch.where(log_tail > _MIN_LOG_PROB, g_tail, torch.zeros_like(g_tail))
        p_topk = coarse[:, :-1].exp()
        inv_tail = torch.exp(-log_tail.clamp(min=_MIN_LOG_PROB))  # 1 / (1 - S)
        row_scale = -g_topk.sum(-1) + g_tail * p_topk.sum(-1) * inv_tail
        grad = e.mul_((row_scale * factor / sum_e).unsqueeze(-1))
        grad.scatter_add_(-1, ids, (g_topk - p_topk * (g_tail * inv_tail).unsqueeze(-1)) * factor)
    if grad_ce is not None:
        grad += grad_ce
    return kd.detach(), ce, agree, student_top1, grad


class SparseDistillationFunction(torch.autograd.Function):
    """sum over answer tokens of kd_weight * T^2 * D(teacher, student) + ce_weight * CE, from hidden states.

    Returns (loss_sum, stats, predictions) where stats = [kd_sum, ce_sum, top1_agreements] and predictions =
    the student's argmax id per answer token [N] (neither has a gradient; the argmax is the one the chunk
    computes anyway, so no logits are kept). The gradients are computed in forward, chunk by chunk, and
    scaled by the incoming gradient in backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_ids, teacher_logprobs, targets, spec, grad_enabled: bool):
        need_h, need_w, need_b = (need and grad_enabled for need in ctx.needs_input_grad[:3])
        need_grad = need_h or need_w or need_b
        n_tokens = hidden.shape[0]
        compute_dtype = (
            torch.get_autocast_dtype(hidden.device.type)
            if torch.is_autocast_enabled(hidden.device.type)
            else hidden.dtype
        )
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        grad_h = torch.zeros_like(hidden, dtype=torch.float32) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        kd_sum = hidden.new_zeros((), dtype=torch.float32)
        ce_sum = hidden.new_zeros((), dtype=torch.float32)
        agree = hidden.new_zeros((), dtype=torch.long)
        predictions = torch.empty(n_tokens, dtype=torch.long, device=hidden.device)
        chunk = spec.chunk_size or auto_chunk_size(weight.shape[0])
        teacher_ids = teacher_ids.long()
        targets = targets.long()
        for start in range(0, n_tokens, chunk):
            end = min(start + chunk, n_tokens)
            h = hidden[start:end].to(compute_dtype)
            kd, ce, n_agree, predictions[start:end], grad_logits = _chunk_loss_and_grad(
                h, w, b, teacher_ids[start:end], teacher_logprobs[start:end], targets[start:end], spec, need_grad
            )
            kd_sum += kd
            ce_sum += ce
            agree += n_agree
            if grad_logits is not None:
                grad_logits = grad_logits.to(compute_dtype)
                if need_h:
                    _addmm_fp32(grad_h[start:end], grad_logits, w)
                if need_w:
                    _addmm_fp32(grad_w, grad_logits.t(), h)
                if need_b:
                    grad_b += grad_logits.float().sum(0)
        # Only weighted terms enter: 0 * (a huge term) must not become NaN.
        loss_sum = sum(w * term for w, term in ((spec.kd_weight, kd_sum), (spec.ce_weight, ce_sum)) if w > 0)
        ctx.grads = (grad_h, grad_w, grad_b)  # fp32, released in backward
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        stats = torch.stack([kd_sum, ce_sum, agree.float()])
        ctx.mark_non_differentiable(stats, predictions)
        return loss_sum, stats, predictions

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats, _grad_predictions):
        grads = []
        for g, dtype in zip(ctx.grads, ctx.dtypes):
            grads.append(None if g is None else (g * grad_loss).to(dtype))
        ctx.grads = None
        return (*grads, None, None, None, None, None)


def sparse_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    targets: torch.Tensor,
    spec: DistillationLossSpec,
    return_predictions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed SSB loss over answer tokens from their hidden states; see `SparseDistillationFunction`.

    Args:
        hidden: [N, H] hidden states at the positions that predict the N answer tokens.
        weight, bias: the LM head ([V, H], [V] or None).
        teacher_ids: [N, K] teacher top-K token ids, most probable first.
        teacher_logprobs: [N, K] teacher log-probs at `spec.temperature`, normalised over the full vocabulary.
        targets: [N] the answer tokens themselves (for the hard-label CE term and its logging).
        return_predictions: also return the student's argmax id per answer token ([N] long, no gradient).
    Returns:
        (loss_sum, stats): the differentiable sum, and [kd_sum, ce_sum, top1_agreements] for logging;
        (loss_sum, stats, predictions) with `return_predictions`.
    """
    grad_enabled = torch.is_grad_enabled()  # under no_grad (eval) skip the gradient matmuls
    loss_sum, stats, predictions = SparseDistillationFunction.apply(
        hidden, weight, bias, teacher_ids, teacher_logprobs, targets, spec, grad_enabled
    )
    return (loss_sum, stats, predictions) if return_predictions else (loss_sum, stats)

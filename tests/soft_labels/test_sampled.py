"""Sampled soft labels: their loss gradient, averaged over many draws, is the dense KL's gradient."""

import pytest
import torch

from ssb_trl.loss import DistillationLossSpec, sparse_distillation_loss
from ssb_trl.soft_labels.codec import PAD_LOGPROB, sample_soft_labels

N_TOKENS, HIDDEN, VOCAB, T = 6, 8, 40, 2.0


def _problem():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N_TOKENS, HIDDEN, generator=g)
    weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.5
    teacher_logp = torch.log_softmax(torch.randn(N_TOKENS, VOCAB, generator=g) * 3 / T, -1)
    return hidden, weight, teacher_logp


def test_expected_gradient_equals_the_dense_kl_gradient():
    hidden, weight, teacher_logp = _problem()
    h = hidden.clone().requires_grad_()
    dense = T * T * (teacher_logp.exp() * (teacher_logp - torch.log_softmax(h @ weight.T / T, -1))).sum()
    (dense_grad,) = torch.autograd.grad(dense, h)

    draws, num_draws = 3000, 8
    ids, logp = sample_soft_labels(
        teacher_logp.repeat(draws, 1), num_draws, top_k=12, generator=torch.Generator().manual_seed(1)
    )
    h = hidden.repeat(draws, 1).requires_grad_()
    targets = torch.zeros(len(h), dtype=torch.long)
    loss, _ = sparse_distillation_loss(h, weight, None, ids, logp, targets, DistillationLossSpec(temperature=T))
    (grads,) = torch.autograd.grad(loss, h)
    grads = grads.view(draws, N_TOKENS, HIDDEN)
    mean, standard_error = grads.mean(0), grads.std(0) / draws**0.5
    assert ((mean - dense_grad).abs() <= 4 * standard_error + 1e-6).all()
    # One draw is far from the dense gradient (noise), top-K with its tail bucket is biased: the average is not.
    assert (grads[0] - dense_grad).norm() > 10 * (mean - dense_grad).norm()


def test_draws_are_reproducible_and_fit_the_contract():
    _, _, teacher_logp = _problem()
    first = sample_soft_labels(teacher_logp, 8, 12, torch.Generator().manual_seed(7))
    again = sample_soft_labels(teacher_logp, 8, 12, torch.Generator().manual_seed(7))
    other = sample_soft_labels(teacher_logp, 8, 12, torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first[0], other[0])
    ids, logp = first
    assert ids.shape == logp.shape == (N_TOKENS, 12)
    assert all(len(set(row.tolist())) == 12 for row in ids)  # distinct ids
    assert (logp[:, 1:] <= logp[:, :-1]).all()  # most probable first
    drawn = logp > PAD_LOGPROB
    torch.testing.assert_close(logp.exp().where(drawn, 0).sum(-1), torch.ones(N_TOKENS))  # counts / N sum to 1
    assert ((logp.exp() * 8).where(drawn, 1) - (logp.exp() * 8).where(drawn, 1).round()).abs().max() < 1e-4
    with pytest.raises(ValueError, match="every drawn token must be stored"):
        sample_soft_labels(teacher_logp, 8, 4)


def test_compact_codes_of_sampled_rows_round_up_so_no_mass_reaches_the_tail():
    """Nearest 8-bit codes can round a sampled row's mass below 1, and the loss would put the rest in the tail bucket
    (a target the draws never had); rounded up, the mass is in [1, exp(1/16)] and the loss scales it back to 1."""
    from ssb_trl.loss import teacher_coarse_log_probs
    from ssb_trl.soft_labels.codec import LOGPROB_CODE_STEP, decode_logprobs, encode_logprobs

    _, _, teacher_logp = _problem()
    _, logp = sample_soft_labels(teacher_logp.repeat(50, 1), 24, 24, torch.Generator().manual_seed(3))
    nearest = torch.from_numpy(decode_logprobs(encode_logprobs(logp.numpy()))).double().exp().sum(-1)
    up = torch.from_numpy(decode_logprobs(encode_logprobs(logp.numpy(), round_up=True)))
    assert (nearest < 1 - 1e-3).any()  # what rounding to nearest would leave to the tail
    mass = up.double().exp().sum(-1)
    assert (mass >= 1).all() and (mass <= torch.tensor(LOGPROB_CODE_STEP).exp() + 1e-4).all()
    coarse = teacher_coarse_log_probs(up, use_tail_bucket=True).exp()
    torch.testing.assert_close(coarse[:, :-1].sum(-1), torch.ones(len(up)))  # scaled back to 1
    assert (coarse[:, -1] < 1e-6).all()  # empty tail

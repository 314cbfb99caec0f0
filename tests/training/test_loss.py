"""The sparse distillation loss against a dense full-vocabulary reference, on random inputs."""

import pytest
import torch

from ssb_trl.loss import DistillationLossSpec, generalized_jsd, sparse_distillation_loss, teacher_coarse_log_probs

N, H, V = 41, 24, 97


def _inputs(seed=0, dtype=torch.float32, temperature=2.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.4
    teacher_logits = torch.randn(N, V, generator=g, dtype=dtype) * 3
    teacher_logp = torch.log_softmax(teacher_logits / temperature, -1)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, teacher_logp, targets


def _sparse(hidden, weight, ids, logp, targets, spec, bias=None):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if bias is not None else None
    loss, stats = sparse_distillation_loss(h, w, b, ids, logp, targets, spec)
    loss.backward()
    return loss.detach(), stats, h.grad, w.grad, (b.grad if b is not None else None)


def _dense_reference(hidden, weight, teacher_ids, teacher_logp, targets, spec, bias=None):
    """KL/JSD on the coarse (top-K + tail) distribution built from full student log-softmax."""
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if bias is not None else None
    logits = h @ w.t() + (b if b is not None else 0)
    student = torch.log_softmax(logits / spec.temperature, -1).gather(-1, teacher_ids)
    if spec.use_tail_bucket:
        student = torch.cat([student, torch.log1p(-student.exp().sum(-1, keepdim=True))], -1)
    else:
        student = torch.log_softmax(student, -1)
    teacher = teacher_coarse_log_probs(teacher_logp, spec.use_tail_bucket)
    kd = generalized_jsd(student, teacher, spec.beta).sum() * spec.temperature**2
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    loss = spec.kd_weight * kd + spec.ce_weight * ce
    loss.backward()
    return loss.detach(), kd.detach(), ce.detach(), h.grad, w.grad, (b.grad if b is not None else None)


def test_full_vocab_equals_dense_kl_with_t_squared():
    """K = vocab: the loss is exactly T^2 * KL(teacher || student) over the full vocabulary."""
    hidden, weight, teacher_logp, targets = _inputs()
    ids = torch.arange(V).expand(N, V).contiguous()
    spec = DistillationLossSpec(temperature=2.0, chunk_size=7)
    loss, stats, gh, gw, _ = _sparse(hidden, weight, ids, teacher_logp, targets, spec)

    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    student = torch.log_softmax((h @ w.t()) / 2.0, -1)
    dense = (teacher_logp.exp() * (teacher_logp - student)).sum() * 4.0
    dense.backward()
    torch.testing.assert_close(loss, dense.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[0], dense.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("k", [1, 8, 40])
def test_topk_matches_dense_coarse_reference(beta, tail, k):
    """Loss and gradients equal the dense coarse-distribution reference, for every divergence and K."""
    hidden, weight, teacher_logp, targets = _inputs(seed=k)
    values, ids = teacher_logp.topk(k, -1)
    bias = torch.randn(V) * 0.1
    spec = DistillationLossSpec(temperature=1.7, beta=beta, use_tail_bucket=tail, ce_weight=0.25, chunk_size=9)
    loss, stats, gh, gw, gb = _sparse(hidden, weight, ids, values, targets, spec, bias)
    ref_loss, ref_kd, ref_ce, rh, rw, rb = _dense_reference(hidden, weight, ids, values, targets, spec, bias)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats[0], ref_kd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats[1], ref_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-6)


def test_chunked_and_unchunked_agree():
    hidden, weight, teacher_logp, targets = _inputs(seed=3)
    values, ids = teacher_logp.topk(16, -1)
    results = [
        _sparse(hidden, weight, ids, values, targets, DistillationLossSpec(chunk_size=c, ce_weight=0.5))
        for c in (1, 5, N, 10_000)
    ]
    for other in results[1:]:
        for a, b in zip(results[0][:4], other[:4]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tail_bucket_is_exact_for_the_coarse_distribution():
    """With the tail, a student equal to the teacher has zero loss whatever K is (the tail mass matches)."""
    hidden, weight, _, targets = _inputs(seed=5)
    logits = hidden @ weight.t()
    teacher_logp = torch.log_softmax(logits / 2.0, -1)  # teacher == student
    for k in (1, 5, 50):
        values, ids = teacher_logp.topk(k, -1)
        loss, *_ = _sparse(hidden, weight, ids, values, targets, DistillationLossSpec(chunk_size=8))
        assert abs(float(loss)) < 1e-4


def test_ce_only_is_hard_label_cross_entropy_and_agreement_counts_top1():
    hidden, weight, teacher_logp, targets = _inputs(seed=7)
    values, ids = teacher_logp.topk(4, -1)
    spec = DistillationLossSpec(kd_weight=0.0, ce_weight=1.0, chunk_size=6)
    loss, stats, gh, _, _ = _sparse(hidden, weight, ids, values, targets, spec)
    h = hidden.clone().requires_grad_()
    logits = h @ weight.t()
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    ce.backward()
    torch.testing.assert_close(loss, ce.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-6)
    assert int(stats[2]) == int((logits.argmax(-1) == ids[:, 0]).sum())


def test_no_gradient_work_under_no_grad():
    hidden, weight, teacher_logp, targets = _inputs()
    values, ids = teacher_logp.topk(8, -1)
    with torch.no_grad():
        loss, stats = sparse_distillation_loss(
            hidden, weight.requires_grad_(), None, ids, values, targets, DistillationLossSpec()
        )
    assert torch.isfinite(loss) and not loss.requires_grad


def test_bfloat16_close_to_float32():
    hidden, weight, teacher_logp, targets = _inputs(seed=11)
    values, ids = teacher_logp.topk(16, -1)
    spec = DistillationLossSpec(chunk_size=16)
    full, *_ = _sparse(hidden, weight, ids, values, targets, spec)
    half, *_ = _sparse(hidden.bfloat16(), weight.bfloat16(), ids, values, targets, spec)
    assert abs(float(half) - float(full)) / float(full) < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"beta": 1.5}, "beta"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "not both 0"),
        ({"chunk_size": 0}, "chunk size"),
    ],
)
def test_bad_loss_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationLossSpec(**kwargs)

"""Numbers that must never train: non-finite settings are refused, and the loss stays finite for any T > 0."""

import math

import pytest
import torch

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.loss import DistillationLossSpec, generalized_jsd, sparse_distillation_loss, teacher_coarse_log_probs
from tests.helpers import build_soft_label_dataset, make_tiny_model

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name", ["temperature", "kd_weight", "ce_weight", "beta"])
def test_loss_settings_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        DistillationLossSpec(**{name: value})


@pytest.mark.parametrize("name", ["temperature", "kd_weight", "ce_weight", "beta", "learning_rate", "weight_decay"])
def test_ssb_config_refuses_nan_in_any_number(tmp_path, name):
    with pytest.raises(ValueError, match=f"{name}=nan"):
        SSBConfig(output_dir=str(tmp_path), use_cpu=True, **{name: math.nan})


def _flat_inputs(n=16, h=8, v=20_000, seed=0):
    """A large, nearly flat vocabulary: the regime where sum(exp(z - max)) is in the thousands."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.05
    teacher_logits = torch.randn(n, v, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, teacher_logits, targets


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("kd_weight, ce_weight", [(1.0, 0.0), (0.0, 1.0), (1.0, 0.5)])
def test_loss_and_logged_terms_match_dense_reference_at_any_temperature(temperature, kd_weight, ce_weight):
    hidden, weight, teacher_logits, targets = _flat_inputs()
    teacher_logp = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = teacher_logp.topk(64, -1)
    spec = DistillationLossSpec(temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight, chunk_size=5)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, stats = sparse_distillation_loss(h, w, None, ids, values, targets, spec)
    loss.backward()

    # The reference runs in float64: at T = 10 the KL of two near-uniform distributions cancels to ~1e-4 per
    # token, where float32 rounding alone moves it by ~0.1%.
    rh, rw = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logits = rh @ rw.t()
    student = torch.log_softmax(logits / temperature, -1).gather(-1, ids)
    student = torch.cat([student, torch.log1p(-student.exp().sum(-1, keepdim=True)).clamp(min=-80.0)], -1)
    kd = generalized_jsd(student, teacher_coarse_log_probs(values, True).double(), 0.0).sum() * temperature**2
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    reference = sum(weight_ * term for weight_, term in ((kd_weight, kd), (ce_weight, ce)) if weight_ > 0)
    reference.backward()

    assert torch.isfinite(loss) and torch.isfinite(stats).all() and torch.isfinite(h.grad).all()
    torch.testing.assert_close(loss.detach(), reference.detach().float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats[0], kd.detach().float(), rtol=1e-4, atol=1e-4)  # logged kd_loss
    torch.testing.assert_close(stats[1], ce.detach().float(), rtol=1e-4, atol=1e-4)  # logged ce_loss
    torch.testing.assert_close(h.grad, rh.grad.float(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(w.grad, rw.grad.float(), rtol=1e-3, atol=1e-6)


def test_a_non_finite_loss_stops_training_instead_of_being_filtered(tmp_path, tokenizer):
    """Trainer's logging_nan_inf_filter would log a NaN step as a number and the optimizer would write NaNs."""
    teacher = make_tiny_model(seed=1)
    dataset, _ = build_soft_label_dataset(teacher, tokenizer, n_rows=4, top_k=8)
    student = make_tiny_model(seed=0)
    with torch.no_grad():
        student.model.norm.weight.fill_(math.nan)
    args = SSBConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=4,
        report_to="none", save_strategy="no",
    )  # fmt: skip
    trainer = SSBTrainer(student, args=args, train_dataset=dataset, processing_class=tokenizer)
    with pytest.raises(FloatingPointError, match="non-finite SSB loss at step 0"):
        trainer.train()

"""SSBTrainer end to end on tiny real models with the real SmolLM2 tokenizer."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.soft_labels.io import load_soft_label_dataset, save_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelError
from tests.helpers import build_soft_label_dataset, make_tiny_model


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        gradient_checkpointing=False,
        bf16=False,  # TRL defaults to bf16 autocast, on CPU too; exact comparisons need fp32
        seed=0,
    )
    defaults.update(kwargs)
    return SSBConfig(**defaults)


@pytest.fixture()
def data(tokenizer):
    # A peaked teacher (large init) that the near-uniform student must learn to imitate.
    teacher = make_tiny_model(seed=1)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(30.0)
    return build_soft_label_dataset(teacher, tokenizer, n_rows=16, top_k=16)


def _evaluate(trainer):
    trainer.model.eval()
    return trainer.evaluate()


def test_distillation_drives_kl_down(tmp_path, tokenizer, data):
    """A real learning check: the student's KL to a different teacher's soft labels falls by a large factor."""
    dataset, _ = data
    args = _args(tmp_path, max_steps=60, learning_rate=2e-2, logging_steps=10)
    trainer = SSBTrainer(
        make_tiny_model(seed=0), args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    before = _evaluate(trainer)
    trainer.train()
    after = _evaluate(trainer)
    assert before["eval_kd_loss"] > 1.0
    assert after["eval_kd_loss"] < before["eval_kd_loss"] / 10, (before, after)
    logs = [entry for entry in trainer.state.log_history if "kd_loss" in entry and "loss" in entry]
    assert {"kd_loss", "ce_loss", "top1_agreement", "mean_answer_length"} <= set(logs[0])


def _one_step_params(tmp_path, dataset, tokenizer, batch, accumulation):
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        ce_weight=0.5,
    )
    trainer = SSBTrainer(make_tiny_model(seed=0), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}, trainer.state.log_history[0]


def test_gradient_accumulation_invariance(tmp_path, tokenizer, data):
    """One step of batch 8 == two accumulated steps of batch 4: the loss is a mean over all answer tokens."""
    dataset, _ = data
    dataset = dataset.select(range(8))
    big, log_big = _one_step_params(tmp_path / "a", dataset, tokenizer, batch=8, accumulation=1)
    small, log_small = _one_step_params(tmp_path / "b", dataset, tokenizer, batch=4, accumulation=2)
    initial = dict(make_tiny_model(seed=0).named_parameters())
    moved = 0.0
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-5, atol=1e-6)
        moved += float((big[name] - initial[name]).abs().sum())
    assert moved > 0
    assert log_big["kd_loss"] == pytest.approx(log_small["kd_loss"], rel=1e-5)


def test_lora_train_save_reload_resume(tmp_path, tokenizer, data):
    from peft import LoraConfig, PeftModel

    dataset, metadata = data
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "data"))
    model = make_tiny_model(seed=0)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM")
    args = _args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    trainer = SSBTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    trainer.save_model(str(tmp_path / "adapter"))
    assert os.path.exists(tmp_path / "adapter" / "adapter_config.json")

    reloaded = PeftModel.from_pretrained(make_tiny_model(seed=0), str(tmp_path / "adapter"))
    ids = torch.tensor([dataset[0]["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trainer.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)

    # Resume from the step-3 checkpoint: same final adapter as the uninterrupted run.
    resumed = SSBTrainer(
        make_tiny_model(seed=0), args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for (name, a), (_, b) in zip(trainer.model.named_parameters(), resumed.model.named_parameters()):
        if "lora" in name:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_full_finetune_save_and_from_pretrained(tmp_path, tokenizer, data):
    dataset, _ = data
    trainer = SSBTrainer(
        make_tiny_model(seed=0), args=_args(tmp_path, max_steps=2), train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    ids = torch.tensor([dataset[0]["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trainer.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "SSB" in card or "ssb" in card


def test_truncation_keeps_soft_labels_in_step(tmp_path, tokenizer, data):
    dataset, _ = data
    shortest_prompt = min(len(r["completion_mask"]) - sum(r["completion_mask"]) for r in dataset)
    max_length = shortest_prompt + 3
    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path, max_length=max_length, max_steps=1),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    for row in trainer.train_dataset:
        assert len(row["input_ids"]) <= max_length
        assert len(row["teacher_topk_ids"]) == sum(row["completion_mask"]) > 0
    trainer.train()


# ---- bad input: each gets the documented error, before training -------------------------------------------------


def _trainer(tmp_path, tokenizer, dataset, **kwargs):
    return SSBTrainer(
        make_tiny_model(seed=0), args=_args(tmp_path, **kwargs), train_dataset=dataset, processing_class=tokenizer
    )


def test_missing_columns(tmp_path, tokenizer, data):
    dataset, _ = data
    with pytest.raises(SoftLabelError, match="lacks the soft-label column"):
        _trainer(tmp_path, tokenizer, dataset.remove_columns(["teacher_topk_logprobs"]))


def test_empty_dataset(tmp_path, tokenizer, data):
    dataset, _ = data
    with pytest.raises(SoftLabelError, match="empty"):
        _trainer(tmp_path, tokenizer, dataset.select([]))


def _edit_row(dataset, row, **changes):
    rows = dataset.to_list()
    rows[row].update(changes)
    edited = type(dataset).from_list(rows)
    edited.info.description = dataset.info.description
    return edited


def test_length_mismatch_names_the_row(tmp_path, tokenizer, data):
    dataset, _ = data
    bad = _edit_row(dataset, 5, teacher_topk_ids=dataset[5]["teacher_topk_ids"][:-1])
    with pytest.raises(SoftLabelError, match="row 5: .* answer tokens but"):
        _trainer(tmp_path, tokenizer, bad)


def test_ids_outside_vocabulary(tmp_path, tokenizer, data):
    dataset, _ = data
    ids = dataset[3]["teacher_topk_ids"]
    ids[0][0] = 10**6
    with pytest.raises(SoftLabelError, match="row 3: teacher token id outside"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 3, teacher_topk_ids=ids))


@pytest.mark.parametrize(
    "value, match", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (2.0, "exceeds 1")]
)
def test_bad_logprobs(tmp_path, tokenizer, data, value, match):
    dataset, _ = data
    logprobs = dataset[2]["teacher_topk_logprobs"]
    logprobs[1][0] = value
    with pytest.raises(SoftLabelError, match=f"row 2: .*{match}"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 2, teacher_topk_logprobs=logprobs))


def test_raw_logits_instead_of_logprobs(tmp_path, tokenizer, data):
    dataset, _ = data
    rows = dataset.to_list()
    for row in rows:
        row["teacher_topk_logprobs"] = [[v + 5.0 for v in r] for r in row["teacher_topk_logprobs"]]
    bad = type(dataset).from_list(rows)
    bad.info.description = dataset.info.description
    with pytest.raises(SoftLabelError, match="row 0: teacher top-K probability mass"):
        _trainer(tmp_path, tokenizer, bad)


def test_other_tokenizer_is_refused(tmp_path, tokenizer, data):
    dataset, metadata = data
    metadata.tokenizer_fingerprint = {"vocab_size": 151665, "sha256": "0123456789abcdef"}
    dataset.info.description = metadata.to_description()
    with pytest.raises(SoftLabelError, match="another tokenizer"):
        _trainer(tmp_path, tokenizer, dataset)


def test_temperature_mismatch_refused_unless_opted_in(tmp_path, tokenizer, data):
    dataset, _ = data
    with pytest.raises(SoftLabelError, match="temperature 2.0 but SSBConfig.temperature is 1.0"):
        _trainer(tmp_path, tokenizer, dataset, temperature=1.0)
    trainer = _trainer(
        tmp_path, tokenizer, dataset, temperature=1.0, allow_temperature_renormalization=True, max_steps=2
    )
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


def test_missing_metadata(tmp_path, tokenizer, data):
    dataset, _ = data
    dataset.info.description = None
    with pytest.raises(SoftLabelError, match="carries no metadata"):
        _trainer(tmp_path, tokenizer, dataset)
    _trainer(tmp_path, tokenizer, dataset, check_soft_label_metadata=False, max_steps=1).train()


def test_config_rejects_packing():
    with pytest.raises(ValueError, match="packing"):
        SSBConfig(output_dir="/tmp/x", packing=True, use_cpu=True, report_to="none")


def test_metadata_roundtrip(tmp_path, data):
    dataset, metadata = data
    save_soft_label_dataset(dataset, str(tmp_path / "d"), metadata)
    loaded, meta = load_soft_label_dataset(str(tmp_path / "d"))
    assert meta == metadata and len(loaded) == len(dataset)
    assert json.loads((tmp_path / "d" / "ssb_metadata.json").read_text())["top_k"] == metadata.top_k


def test_model_given_by_path_and_tokenizer_resolved(tmp_path, tokenizer, data):
    """Like SFTTrainer: `model` may be a name or path, and the tokenizer is then loaded from it."""
    dataset, _ = data
    make_tiny_model(seed=0).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    trainer = SSBTrainer(str(tmp_path / "model"), args=_args(tmp_path, max_steps=1), train_dataset=dataset)
    assert trainer.processing_class.chat_template and trainer.processing_class.pad_token is not None
    trainer.train()


def test_adapter_on_the_lm_head_is_refused(tmp_path, tokenizer, data):
    """The loss reads `lm_head.weight` directly: a LoRA adapter on the LM head would be silently ignored."""
    from peft import LoraConfig, get_peft_model

    from ssb_trl.modeling import patch_forward_with_soft_label_loss

    dataset, _ = data
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="lm_head"):
        SSBTrainer(
            make_tiny_model(seed=0),
            args=_args(tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    # The forward patch itself refuses too (it is what computes the loss), whoever wrapped the model.
    peft_model = get_peft_model(make_tiny_model(seed=0), peft_config)
    with pytest.raises(ValueError, match="adapter on the LM head .* would be ignored"):
        patch_forward_with_soft_label_loss(peft_model.get_base_model())
    # LoRA elsewhere is fine.
    fine = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM")
    patch_forward_with_soft_label_loss(get_peft_model(make_tiny_model(seed=0), fine).get_base_model())

"""Sampled soft labels (`--soft_label_mode sampled`) end to end: extraction, preparation, metadata, checks, inspect,
the loss against a dense reference, and training.

Preparation runs use the digit model of tests/helpers.py (a real tiny Llama that answers 1, 2 or 3): at the answer
digit the teacher's distribution is ~1/3 on each digit, so the draws are known. Training runs use helpers.py's tiny
random Llama with SmolLM2's vocabulary: near-uniform, so N draws rarely hold the answer's own token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.jobs.settings import SOFT_LABEL_FIELDS as ROWS_FIELDS
from ssb_trl.loss import DistillationLossSpec, sparse_distillation_loss
from ssb_trl.prepare import prepare_ssb_data
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.checks import validate_soft_label_dataset
from ssb_trl.soft_labels.codec import decode_logprobs, encode_soft_labels, sample_soft_labels
from ssb_trl.soft_labels.io import load_soft_label_dataset, read_metadata_file, save_soft_label_dataset
from ssb_trl.soft_labels.schema import (
    FORMAT_VERSION,
    SAMPLED_FORMAT_VERSION,
    SoftLabelError,
    SoftLabelMetadata,
    features,
    tokenizer_fingerprint,
)
from ssb_trl.soft_labels.teacher import extract_soft_labels, extract_topk_soft_labels
from tests.helpers import DIGITS, EOS, GOLDS, make_digit_model, make_tiny_model, small_config, write_questions

T = 2.0


def _sampled_config(tmp_path: Path, questions: Path, **overrides) -> PrepConfig:
    settings = {"soft_label_mode": "sampled", "soft_label_draws": 16, "soft_label_top_k": 64, **overrides}
    return small_config(tmp_path, questions, **settings)


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


# ---- preparation --------------------------------------------------------------------------------------------------


def test_preparation_writes_reproducible_sampled_labels(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = _sampled_config(tmp_path, questions)
    summary = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    dataset, metadata = load_soft_label_dataset(config.output_dir)
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    assert (metadata.soft_label_mode, metadata.soft_label_draws, metadata.top_k) == ("sampled", 16, 16)
    assert metadata.format_version == SAMPLED_FORMAT_VERSION == FORMAT_VERSION == 3
    assert json.loads((Path(config.output_dir) / "ssb_metadata.json").read_text())["soft_label_mode"] == "sampled"
    assert len(dataset) == summary.teacher_kept > 0

    digits = {tokenizer.convert_tokens_to_ids(d) for d in DIGITS}
    eos = tokenizer.convert_tokens_to_ids(EOS)
    for row in dataset:
        ids, logprobs = np.array(row["teacher_topk_ids"]), np.array(row["teacher_topk_logprobs"])
        assert ids.shape == logprobs.shape == (2, 16)
        counts = np.exp(logprobs) * 16
        drawn = counts > 0.5
        np.testing.assert_allclose(counts[drawn], np.round(counts[drawn]), atol=2e-2)  # counts of N = 16 draws
        np.testing.assert_allclose(counts.sum(-1), 16, atol=2e-2)
        # Answer digit: drawn from ~1/3 on each digit; end of turn: ~1 on eos.
        assert set(ids[0][drawn[0]]) <= digits and 1 <= drawn[0].sum() <= 3
        assert ids[1][0] == eos and counts[1][0] == pytest.approx(16, abs=0.1)
    first_digit_counts = np.exp(np.array([row[0] for row in dataset["teacher_topk_logprobs"]]))[:, 0] * 16
    assert first_digit_counts.max() < 16  # not a top-1: draws split over the three digits

    # Same seed: the same draws, in another folder and after an interrupted run alike; another seed: others.
    again = _sampled_config(tmp_path, questions, output_dir=str(tmp_path / "again"))
    prepare_ssb_data(again, model=model, tokenizer=tokenizer, show_progress=False)
    assert load_soft_label_dataset(again.output_dir)[0].to_list() == dataset.to_list()


def test_changing_the_mode_or_draws_redoes_only_the_soft_labels(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    assert {"soft_label_mode", "soft_label_draws"} <= ROWS_FIELDS
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    topk = small_config(tmp_path, questions, soft_label_top_k=64)
    prepare_ssb_data(topk, model=model, tokenizer=tokenizer, show_progress=False)
    work = PrepareJob.work_dir(topk.output_dir)
    shards = range(4)
    earlier = {stage: {s: _stamp(work.shard_path(stage, s)) for s in shards} for stage in ("rollouts", "teacher")}

    for draws in (16, 8):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            prepare_ssb_data(
                _sampled_config(tmp_path, questions, soft_label_draws=draws),
                model=model,
                tokenizer=tokenizer,
                show_progress=False,
            )
        assert "redoing soft-label rows" in _messages(caplog) and "reusing the finished rollouts" in _messages(caplog)
        now = {stage: {s: _stamp(work.shard_path(stage, s)) for s in shards} for stage in ("rollouts", "teacher")}
        assert now == earlier  # rollouts and teacher answers untouched
        dataset, metadata = load_soft_label_dataset(topk.output_dir)
        assert metadata.soft_label_draws == draws and all(
            len(e) == draws for r in dataset["teacher_topk_ids"] for e in r
        )
    # The final dataset is the one a fresh sampled run makes.
    fresh = _sampled_config(tmp_path, questions, soft_label_draws=8, output_dir=str(tmp_path / "fresh"))
    prepare_ssb_data(fresh, model=model, tokenizer=tokenizer, show_progress=False)
    assert load_soft_label_dataset(fresh.output_dir)[0].to_list() == dataset.to_list()
    # In top-K mode the number of draws is unused: changing it redoes nothing.
    assert "soft_label_draws" not in small_config(tmp_path, questions).fingerprint()


def test_compact_sampled_preparation_keeps_mass_one_or_more(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = _sampled_config(tmp_path, questions, logprob_dtype="uint8")
    prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    dataset, metadata = load_soft_label_dataset(config.output_dir)
    assert metadata.logprob_dtype == "uint8" and metadata.format_version == 3
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    codes = np.array([entry for row in dataset["teacher_topk_logprobs"] for entry in row])
    mass = np.exp(decode_logprobs(codes).astype(np.float64)).sum(-1)
    assert (mass >= 1.0).all() and (mass <= math.exp(1 / 16) + 1e-3).all()


def test_settings_are_checked() -> None:
    base = {"dataset_name": "gsm8k", "model_name_or_path": "m", "output_dir": "o"}
    with pytest.raises(ValueError, match="soft_label_mode must be one of"):
        PrepConfig(**base, soft_label_mode="importance")
    with pytest.raises(
        ValueError, match=r"soft_label_top_k=16 applies to --soft_label_mode topk.*--soft_label_draws 16"
    ):
        PrepConfig(**base, soft_label_mode="sampled", soft_label_top_k=16)
    with pytest.raises(ValueError, match="soft_label_draws must be >= 1"):
        PrepConfig(**base, soft_label_mode="sampled", soft_label_draws=0)
    assert PrepConfig(**base, soft_label_mode="sampled", soft_label_draws=24).soft_label_entries == 24
    assert PrepConfig(**base, soft_label_top_k=16).soft_label_entries == 16


# ---- extraction ----------------------------------------------------------------------------------------------------


def _chat_ids(tokenizer, content: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def _teacher_sequences(tokenizer, n: int = 5) -> tuple[list[list[int]], list[int]]:
    sequences, starts = [], []
    for i in range(n):
        prompt = _chat_ids(tokenizer, f"What is {i} + {i + 1}? Hint: {2 * i + 1}.")
        answer = tokenizer(f"{i} plus {i + 1} is" + " so" * i + f" {2 * i + 1}.", add_special_tokens=False)[
            "input_ids"
        ]
        sequences.append(list(prompt) + answer)
        starts.append(len(prompt))
    return sequences, starts


def test_extraction_draws_depend_on_the_seed_alone(tokenizer) -> None:
    teacher = make_tiny_model(seed=3)
    sequences, starts = _teacher_sequences(tokenizer)
    kwargs = {"mode": "sampled", "num_draws": 12, "temperature": T, "show_progress": False}
    seeds = [101, 102, 103, 104, 105]
    together = extract_soft_labels(teacher, sequences, starts, seeds=seeds, batch_size=5, **kwargs)
    alone = extract_soft_labels(teacher, sequences, starts, seeds=seeds, batch_size=1, **kwargs)
    for (ids_a, lp_a), (ids_b, lp_b) in zip(together, alone):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_allclose(lp_a.astype(np.float32), lp_b.astype(np.float32))
    other = extract_soft_labels(teacher, sequences, starts, seeds=[s + 1 for s in seeds], **kwargs)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(together, other))
    for ids, logprobs in together:
        assert ids.shape == (len(logprobs), 12)
        np.testing.assert_allclose(np.exp(logprobs.astype(np.float64)).sum(-1), 1.0, atol=2e-3)
    # The top-K entry point is unchanged.
    topk = extract_topk_soft_labels(teacher, sequences, starts, top_k=12, temperature=T, show_progress=False)
    same = extract_soft_labels(teacher, sequences, starts, mode="topk", top_k=12, temperature=T, show_progress=False)
    for (a_ids, a_lp), (b_ids, b_lp) in zip(topk, same):
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_lp, b_lp)
    with pytest.raises(ValueError, match="one seed per sequence"):
        extract_soft_labels(teacher, sequences, starts, mode="sampled", num_draws=12)
    with pytest.raises(ValueError, match="mode must be one of"):
        extract_soft_labels(teacher, sequences, starts, mode="importance")


# ---- the loss against a dense reference -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_loss_on_stored_sampled_labels_is_the_dense_kl_to_the_draws(dtype: str) -> None:
    """Stored in any dtype, sampled labels give the full-vocabulary KL to the stored distribution: its tail is empty,
    and the 8-bit codes (rounded up) are scaled back to mass 1 instead of leaving the excess in the target."""
    g = torch.Generator().manual_seed(0)
    n, hidden_size, vocab, draws = 12, 16, 300, 16
    hidden = torch.randn(n, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    teacher_logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1)
    ids, logp = sample_soft_labels(teacher_logp, draws, draws, torch.Generator().manual_seed(1))
    if dtype == "uint8":
        ids_np, codes = encode_soft_labels(ids.numpy(), logp.numpy(), "uint8", vocab, sampled=True)
        ids, stored = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(decode_logprobs(codes))
        assert (stored.exp().sum(-1) > 1.0).all()  # rounded up
    else:
        stored = logp.to(getattr(torch, dtype)).float()
    # Dense reference: the stored entries scattered over the vocabulary, as a distribution.
    target = torch.zeros(n, vocab).scatter_(-1, ids, stored.exp())
    target = target / target.sum(-1, keepdim=True).clamp(min=1.0)
    h = hidden.clone().requires_grad_()
    student_logp = torch.log_softmax(h @ weight.T / T, -1)
    dense = T * T * (target * (target.clamp(min=1e-30).log() - student_logp)).sum()
    (dense_grad,) = torch.autograd.grad(dense, h)

    h = hidden.clone().requires_grad_()
    loss, _ = sparse_distillation_loss(
        h, weight, None, ids, stored, torch.zeros(n, dtype=torch.long), DistillationLossSpec(temperature=T)
    )
    (grad,) = torch.autograd.grad(loss, h)
    tolerance = 5e-3 if dtype == "float16" else 1e-4  # float16: up to ~0.1% of the mass lands in the tail
    torch.testing.assert_close(loss, dense, rtol=tolerance, atol=1e-5)
    torch.testing.assert_close(grad, dense_grad, rtol=tolerance, atol=tolerance * dense_grad.abs().max().item())
    # And that stored distribution is the draws' counts / N (8-bit codes: within their rounding).
    counts = torch.zeros(n, vocab).scatter_(-1, ids, stored.exp())
    counts = counts / counts.sum(-1, keepdim=True)
    drawn = counts > 0.5 / draws
    relative = (counts[drawn] * draws / (counts[drawn] * draws).round() - 1).abs().max()
    assert relative < (0.035 if dtype == "uint8" else 2e-3)


# ---- metadata -----------------------------------------------------------------------------------------------------


def _metadata(**fields) -> SoftLabelMetadata:
    return SoftLabelMetadata(
        teacher_model="t", tokenizer_fingerprint={"vocab_size": 3, "sha256": "x"}, top_k=4, temperature=2.0, **fields
    )


@pytest.mark.parametrize("version,dtype", [(1, "float16"), (2, "uint8")])
def test_datasets_saved_before_the_mode_existed_load_as_top_k(tmp_path: Path, version: int, dtype: str) -> None:
    old = {"teacher_model": "t", "tokenizer_fingerprint": {"vocab_size": 3, "sha256": "x"}, "top_k": 4,
           "temperature": 2.0, "prompt_template_version": "v", "source": {}, "logprob_dtype": dtype,
           "format_version": version}  # fmt: skip
    path = tmp_path / "ssb_metadata.json"
    path.write_text(json.dumps(old))
    metadata = read_metadata_file(path)
    assert (metadata.soft_label_mode, metadata.soft_label_draws, metadata.format_version) == ("topk", None, version)
    assert not metadata.sampled
    assert SoftLabelMetadata.from_description(json.dumps({"ssb_trl_soft_labels": old})) == metadata


def test_sampled_metadata_is_version_3_and_checked(tmp_path: Path) -> None:
    sampled = _metadata(soft_label_mode="sampled", soft_label_draws=4)
    assert sampled.format_version == 3 and sampled.sampled
    assert _metadata(soft_label_mode="sampled", soft_label_draws=4, logprob_dtype="uint8").format_version == 3
    assert _metadata().format_version == 1
    assert SoftLabelMetadata.from_description(sampled.to_description()) == sampled
    with pytest.raises(ValueError, match=r"soft_label_draws \(8\) must equal top_k \(4\)"):
        _metadata(soft_label_mode="sampled", soft_label_draws=8)
    path = tmp_path / "ssb_metadata.json"
    for bad, message in (
        ({"soft_label_mode": "importance"}, "soft_label_mode must be one of"),
        ({"soft_label_mode": "sampled", "soft_label_draws": None}, "need soft_label_draws = top_k"),
    ):
        path.write_text(json.dumps({**_metadata().to_dict(), **bad}))
        with pytest.raises(SoftLabelError, match=message):
            read_metadata_file(path)


# ---- checks, inspect and training ------------------------------------------------------------------------------


def _sampled_dataset(teacher, tokenizer, draws: int = 16, dtype: str = "float16", n_rows: int = 8):
    """A sampled soft-label dataset from `teacher`, its metadata recording a teacher that sampled with top_k 8 <= N,
    so that the top-K check ("the answer token is among the stored ids") would apply to top-K labels."""
    sequences, starts, rows = [], [], []
    for i in range(n_rows):
        question = f"What is {i} + {i + 1}?"
        answer = f"{i} + {i + 1} = \\boxed{{{2 * i + 1}}}"
        student = _chat_ids(tokenizer, question)
        hinted = _chat_ids(tokenizer, f"{question} Hint: {2 * i + 1}.")
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(EOS)]
        sequences.append(list(hinted) + answer_ids)
        starts.append(len(hinted))
        rows.append(
            {
                "id": str(i),
                "answer": str(2 * i + 1),
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}],
                "input_ids": list(student) + answer_ids,
                "completion_mask": [0] * len(student) + [1] * len(answer_ids),
            }
        )
    labels = extract_soft_labels(
        teacher, sequences, starts, mode="sampled", num_draws=draws, seeds=list(range(n_rows)), temperature=T,
        logprob_dtype=dtype, show_progress=False,
    )  # fmt: skip
    for row, (ids, logprobs) in zip(rows, labels):
        row["teacher_topk_ids"], row["teacher_topk_logprobs"] = ids.tolist(), logprobs.tolist()
    metadata = SoftLabelMetadata(
        teacher_model="tiny-random-teacher",
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=draws,
        temperature=T,
        source={"teacher_sampling": {"temperature": 0.7, "top_k": 8}},
        logprob_dtype=dtype,
        soft_label_mode="sampled",
        soft_label_draws=draws,
    )
    dataset = Dataset.from_list(rows, features=features(dtype, vocab_size=len(tokenizer), top_k=draws))
    dataset.info.description = metadata.to_description()
    return dataset, metadata


def _train_args(tmp_path: Path, **kwargs) -> SSBConfig:
    settings = dict(
        output_dir=str(tmp_path / "train"), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3,
        logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", bf16=False, seed=0, temperature=T,
    )  # fmt: skip
    settings.update(kwargs)
    return SSBConfig(**settings)


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_sampled_dataset_passes_the_checks_and_trains(tmp_path: Path, tokenizer, dtype: str) -> None:
    teacher = make_tiny_model(seed=1)  # near-uniform over 49,152 tokens: 16 draws rarely hold the answer token
    dataset, metadata = _sampled_dataset(teacher, tokenizer, dtype=dtype)
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    # The same rows called top-K labels are refused: their answer tokens are not among the stored ids.
    as_topk = dataclasses.replace(metadata, soft_label_mode="topk", soft_label_draws=None)
    with pytest.raises(SoftLabelError, match="not among the teacher's top-16"):
        validate_soft_label_dataset(dataset, metadata=as_topk)

    loaded, loaded_metadata = load_soft_label_dataset(str(tmp_path / "data"))
    assert loaded_metadata == metadata
    student = make_tiny_model(seed=0)
    trainer = SSBTrainer(model=student, args=_train_args(tmp_path), train_dataset=loaded, processing_class=tokenizer)
    before = [p.detach().clone() for p in student.parameters()]
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))

    # What would bias sampled labels is refused: dropping the tail bucket, rescaling to another temperature.
    with pytest.raises(SoftLabelError, match="keep use_tail_bucket=True"):
        SSBTrainer(model=student, args=_train_args(tmp_path, use_tail_bucket=False), train_dataset=loaded,
                   processing_class=tokenizer)  # fmt: skip
    with pytest.raises(SoftLabelError, match="rescaling them to another one is biased"):
        SSBTrainer(model=student, args=_train_args(tmp_path, temperature=1.0, allow_temperature_renormalization=True),
                   train_dataset=loaded, processing_class=tokenizer)  # fmt: skip


def test_top_k_rows_under_sampled_metadata_are_refused(tokenizer) -> None:
    teacher = make_tiny_model(seed=1)
    dataset, metadata = _sampled_dataset(teacher, tokenizer, n_rows=2)
    sequences, starts = _teacher_sequences(tokenizer, n=2)
    topk = extract_topk_soft_labels(teacher, sequences, starts, top_k=16, temperature=T, show_progress=False)
    rows = dataset.to_list()
    for row, (ids, logprobs), seq, start in zip(rows, topk, sequences, starts):
        row["input_ids"] = [1, *seq[start:]]
        row["completion_mask"] = [0] + [1] * (len(seq) - start)
        row["teacher_topk_ids"], row["teacher_topk_logprobs"] = ids.tolist(), logprobs.tolist()
    with pytest.raises(SoftLabelError, match=r"sampled soft labels of mass 0\.\d+, not 1"):
        validate_soft_label_dataset(Dataset.from_list(rows, features=dataset.features), metadata=metadata)


def test_inspect_reports_the_mode_and_distinct_tokens(tmp_path: Path, tokenizer, tokenizer_dir: str, capsys) -> None:
    from ssb_trl.scripts.inspect_data import InspectArguments, main

    dataset, metadata = _sampled_dataset(make_tiny_model(seed=1), tokenizer, dtype="uint8")
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    stats = main(InspectArguments(dataset_name=str(tmp_path / "data"), tokenizer_name_or_path=tokenizer_dir))
    shown = capsys.readouterr().out
    assert stats["soft_label_mode"] == "sampled" and stats["soft_label_draws"] == 16
    assert stats["format"] == "compact sampled, N = 16 draws (format version 3: uint16 ids, uint8 log-prob codes)"
    distinct = stats["distinct_tokens_per_position"]
    assert 14 <= distinct["median"] <= 16 and 12 < distinct["mean"] <= 16  # a near-uniform teacher: ~all distinct
    assert "| distinct drawn tokens per position (mean / median) |" in shown and "of 16 draws |" in shown
    assert stats["bytes_per_answer_token"]["soft_labels"] == pytest.approx(16 * 3, abs=1)  # + row offsets

"""Compact soft labels (format version 2): encoding, extraction, storage, validation, collation and the loss,
against the same labels stored as floats and a dense full-vocabulary reference."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.collator import SSBDataCollator
from ssb_trl.loss import DistillationLossSpec, sparse_distillation_loss
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.soft_labels.checks import check_metadata_compatible, validate_soft_label_dataset
from ssb_trl.soft_labels.codec import (
    COMPACT_FORMAT_VERSION,
    LOGPROB_CODE_STEP,
    decode_logprobs,
    encode_logprobs,
    id_dtype_for_vocab,
)
from ssb_trl.soft_labels.io import compact_soft_label_dataset, load_soft_label_dataset, save_soft_label_dataset
from ssb_trl.soft_labels.schema import FORMAT_VERSION, SoftLabelError, SoftLabelMetadata, features
from ssb_trl.soft_labels.teacher import extract_topk_soft_labels
from tests.helpers import build_soft_label_dataset, make_tiny_model

VOCAB = 49152


def test_id_dtype_is_the_narrowest_for_the_vocabulary():
    assert id_dtype_for_vocab(49152) == "uint16" and id_dtype_for_vocab(65536) == "uint16"
    assert id_dtype_for_vocab(65537) == "uint32" and id_dtype_for_vocab(151936) == "uint32"
    with pytest.raises(ValueError, match="vocab_size"):
        id_dtype_for_vocab(0)


def test_codes_round_to_the_step_and_keep_the_order():
    logits = torch.randn(200, VOCAB, generator=torch.Generator().manual_seed(0)) * 4
    logprobs = torch.log_softmax(logits / 2, -1).topk(32, -1).values.double().numpy()
    codes = encode_logprobs(logprobs)
    assert codes.dtype == np.uint8
    decoded = decode_logprobs(codes).astype(np.float64)
    assert np.abs(decoded - logprobs).max() <= LOGPROB_CODE_STEP / 2 + 1e-9
    assert (np.diff(codes.astype(int), axis=-1) >= 0).all()  # most probable first survives
    true_mass, stored_mass = np.exp(logprobs).sum(-1), np.exp(decoded).sum(-1)
    assert (np.abs(stored_mass - true_mass) <= true_mass * (np.exp(LOGPROB_CODE_STEP / 2) - 1)).all()
    # Below the range: stored at the smallest code; raw logits and NaN are refused.
    assert encode_logprobs(np.array([-0.1, -40.0])).tolist() == [2, 255]
    with pytest.raises(ValueError, match="raw logits"):
        encode_logprobs(np.array([3.0, -1.0]))
    with pytest.raises(ValueError, match="NaN"):
        encode_logprobs(np.array([np.nan]))


def test_extraction_writes_compact_labels(tokenizer):
    model = make_tiny_model(seed=3)
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (12, 30, 7)]
    starts = [5, 10, 3]
    kwargs = dict(top_k=8, temperature=2.0, batch_size=2, show_progress=False)
    floats = extract_topk_soft_labels(model, sequences, starts, logprob_dtype="float32", **kwargs)
    compact = extract_topk_soft_labels(model, sequences, starts, logprob_dtype="uint8", **kwargs)
    for (ids, logprobs), (compact_ids, codes) in zip(floats, compact):
        assert compact_ids.dtype == np.uint16 and codes.dtype == np.uint8
        np.testing.assert_array_equal(compact_ids, ids)
        np.testing.assert_array_equal(codes, encode_logprobs(logprobs))


@pytest.fixture()
def float_and_compact(tokenizer):
    teacher = make_tiny_model(seed=1)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(30.0)  # a peaked teacher: a small tail, the hard case
    dataset, metadata = build_soft_label_dataset(teacher, tokenizer, n_rows=8, top_k=16)
    compact, compact_metadata = compact_soft_label_dataset(dataset, metadata, VOCAB)
    return dataset, metadata, compact, compact_metadata


def test_compact_dataset_saves_small_and_loads(tmp_path, float_and_compact):
    dataset, metadata, compact, compact_metadata = float_and_compact
    assert compact_metadata.logprob_dtype == "uint8" and compact_metadata.format_version == COMPACT_FORMAT_VERSION == 2
    assert FORMAT_VERSION == 3  # the newest this ssb-trl reads: sampled soft labels
    assert metadata.format_version == 1  # float datasets keep the version every ssb-trl reads
    save_soft_label_dataset(compact, str(tmp_path / "compact"), compact_metadata)
    save_soft_label_dataset(dataset, str(tmp_path / "float"), metadata)
    loaded, loaded_metadata = load_soft_label_dataset(str(tmp_path / "compact"))
    assert loaded_metadata == compact_metadata
    assert json.loads((tmp_path / "compact" / "ssb_metadata.json").read_text())["format_version"] == 2
    ids_type = loaded.data.column("teacher_topk_ids").type
    assert ids_type == pa.list_(pa.list_(pa.uint16(), 16))
    assert loaded.data.column("teacher_topk_logprobs").type == pa.list_(pa.list_(pa.uint8(), 16))
    compact_features = features("uint8", vocab_size=VOCAB, top_k=16)
    for column in ("teacher_topk_ids", "teacher_topk_logprobs"):
        assert loaded.features[column] == compact_features[column]

    def label_bytes(d):
        return sum(d.data.column(c).nbytes for c in ("teacher_topk_ids", "teacher_topk_logprobs"))

    tokens = sum(len(r) for r in dataset["teacher_topk_ids"])
    assert label_bytes(loaded) / tokens == pytest.approx(16 * 3, abs=0.5)  # 2-byte ids + 1-byte codes
    assert label_bytes(dataset) / tokens > 16 * 8  # int32 ids + float32 log-probs + offsets


def test_validation_reads_codes_and_refuses_mismatches(float_and_compact):
    dataset, metadata, compact, compact_metadata = float_and_compact
    validate_soft_label_dataset(compact, metadata=compact_metadata, vocab_size=VOCAB)
    with pytest.raises(SoftLabelError, match="logprob_dtype='float32' but teacher_topk_logprobs holds uint8"):
        validate_soft_label_dataset(compact, metadata=metadata)
    with pytest.raises(SoftLabelError, match="logprob_dtype='uint8' but teacher_topk_logprobs holds double"):
        validate_soft_label_dataset(dataset, metadata=compact_metadata)
    as_int16 = compact.cast_column("teacher_topk_logprobs", features("float32")["teacher_topk_ids"])
    with pytest.raises(SoftLabelError, match="stores teacher_topk_logprobs as int32"):
        validate_soft_label_dataset(as_int16)
    # Codes that increase along K are log-probs stored least probable first: named like float ones.
    reversed_rows = compact.map(lambda row: {"teacher_topk_logprobs": [r[::-1] for r in row["teacher_topk_logprobs"]]})
    with pytest.raises(SoftLabelError, match="increase along K"):
        validate_soft_label_dataset(reversed_rows)


def test_older_ssb_trl_refuses_compact_data(tokenizer, float_and_compact):
    *_, compact_metadata = float_and_compact
    newer = SoftLabelMetadata.from_dict({**compact_metadata.to_dict(), "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SoftLabelError, match="newer than this ssb-trl understands"):
        check_metadata_compatible(newer, tokenizer, 2.0)


def _collated_loss(dataset, student, spec):
    batch = SSBDataCollator(pad_token_id=2)([dataset[i] for i in range(len(dataset))])
    assert batch["teacher_topk_logprobs"].dtype == torch.float32
    hidden = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    answer = batch["labels"][:, 1:] != -100
    h = hidden[:, :-1][answer].detach().requires_grad_()
    targets = batch["labels"][:, 1:][answer]
    weight = student.get_output_embeddings().weight.detach()
    loss, _ = sparse_distillation_loss(
        h, weight, None, batch["teacher_topk_ids"], batch["teacher_topk_logprobs"], targets, spec
    )
    (grad,) = torch.autograd.grad(loss, h)
    return loss.item(), grad, batch


def test_loss_from_compact_equals_loss_from_floats(float_and_compact):
    """Same rows, same loss code: the compact labels give the float labels' loss and gradient up to the rounding."""
    dataset, _, compact, _ = float_and_compact
    student = make_tiny_model(seed=0)
    spec = DistillationLossSpec(temperature=2.0)
    loss_float, grad_float, batch_float = _collated_loss(dataset, student, spec)
    loss_compact, grad_compact, batch_compact = _collated_loss(compact, student, spec)
    torch.testing.assert_close(batch_compact["teacher_topk_ids"], batch_float["teacher_topk_ids"])
    torch.testing.assert_close(
        batch_compact["teacher_topk_logprobs"],
        batch_float["teacher_topk_logprobs"].clamp(min=-255 * LOGPROB_CODE_STEP),
        atol=LOGPROB_CODE_STEP / 2 + 1e-6,
        rtol=0,
    )
    assert loss_compact == pytest.approx(loss_float, rel=0.02)
    cosine = torch.nn.functional.cosine_similarity(grad_compact.flatten(), grad_float.flatten(), dim=0)
    assert cosine > 0.999


def test_full_vocabulary_compact_labels_match_the_dense_kl():
    """K = vocabulary: the compact labels' loss is the dense T^2 KL(teacher || student) up to the rounding."""
    vocab, hidden_size, n, t = 500, 16, 12, 2.0
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    teacher_logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2 / t, -1)
    values, ids = teacher_logp.topk(vocab, -1)
    codes = torch.from_numpy(encode_logprobs(values.numpy()))
    targets = ids[:, 0]

    h = hidden.clone().requires_grad_()
    student_logp = torch.log_softmax(h @ weight.T / t, -1)
    dense = t * t * (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
    (dense_grad,) = torch.autograd.grad(dense, h)

    h = hidden.clone().requires_grad_()
    batch_logp = SSBDataCollator(pad_token_id=0)(
        [{"input_ids": [0, 1], "completion_mask": [0, 1], "teacher_topk_ids": [], "teacher_topk_logprobs": codes}]
    )["teacher_topk_logprobs"]
    loss, _ = sparse_distillation_loss(h, weight, None, ids, batch_logp, targets, DistillationLossSpec(temperature=t))
    (grad,) = torch.autograd.grad(loss, h)
    assert loss.item() == pytest.approx(dense.item(), rel=0.05)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), dense_grad.flatten(), dim=0) > 0.99


def test_trainer_trains_from_compact_data_as_from_floats(tmp_path, tokenizer, float_and_compact):
    dataset, metadata, compact, compact_metadata = float_and_compact
    save_soft_label_dataset(compact, str(tmp_path / "compact"), compact_metadata)
    compact, _ = load_soft_label_dataset(str(tmp_path / "compact"))
    losses = []
    for data in (dataset, compact):
        args = SSBConfig(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=8,
            max_steps=1,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            bf16=False,
            seed=0,
            max_length=40,  # truncation runs on the compact columns too
        )
        trainer = SSBTrainer(make_tiny_model(seed=0), args=args, train_dataset=data, processing_class=tokenizer)
        trainer.train()
        losses.append(trainer.state.log_history[0]["kd_loss"])
    assert np.isfinite(losses).all() and losses[1] == pytest.approx(losses[0], rel=0.02)


def test_preparation_accepts_the_compact_setting():
    assert PrepConfig(dataset_name="gsm8k", model_name_or_path="m", output_dir="o", logprob_dtype="uint8")
    with pytest.raises(ValueError, match="float16, float32 or uint8"):
        PrepConfig(dataset_name="gsm8k", model_name_or_path="m", output_dir="o", logprob_dtype="int4")


def test_inspect_reports_the_format_and_bytes(tmp_path, tokenizer, tokenizer_dir, float_and_compact, capsys):
    from ssb_trl.scripts.inspect_data import InspectArguments, main

    dataset, metadata, compact, compact_metadata = float_and_compact
    save_soft_label_dataset(compact, str(tmp_path / "compact"), compact_metadata)
    save_soft_label_dataset(dataset, str(tmp_path / "float"), metadata)
    stats = {
        name: main(InspectArguments(dataset_name=str(tmp_path / name), tokenizer_name_or_path=tokenizer_dir))
        for name in ("float", "compact")
    }
    shown = capsys.readouterr().out
    assert stats["compact"]["format"] == "compact top-K (format version 2: uint16 ids, uint8 log-prob codes)"
    # build_soft_label_dataset builds the float rows with Dataset.from_list: int64 ids, float64 log-probs
    assert stats["float"]["format"] == "top-K (format version 1: int64 ids, float32 log-probs)"
    assert "| format | compact top-K (format version 2" in shown
    assert stats["compact"]["bytes_per_answer_token"]["soft_labels"] == pytest.approx(16 * 3, abs=0.5)
    assert stats["float"]["bytes_per_answer_token"]["soft_labels"] == pytest.approx(16 * 16 + 8, abs=0.5)
    compact_disk = stats["compact"]["bytes_per_answer_token"]["on_disk"]
    assert compact_disk < stats["float"]["bytes_per_answer_token"]["on_disk"] - 16 * 4
    # The decoded top-K mass is the float one up to the rounding of the codes.
    for p in ("p5", "p50", "p95"):
        float_mass = stats["float"]["top_k_mass_percentiles"][p]
        assert stats["compact"]["top_k_mass_percentiles"][p] == pytest.approx(float_mass, rel=0.035)


def test_preparation_writes_the_compact_format(tmp_path, tokenizer):
    """`ssb-trl prepare --logprob_dtype uint8`: the same rows as float16, with uint16 ids and uint8 codes."""
    from ssb_trl.prepare import prepare_ssb_data
    from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    datasets_by_dtype = {}
    for dtype in ("float16", "uint8"):
        config = small_config(tmp_path, questions, logprob_dtype=dtype, output_dir=str(tmp_path / dtype))
        prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
        datasets_by_dtype[dtype] = load_soft_label_dataset(config.output_dir)
    (floats, _), (compact, metadata) = datasets_by_dtype["float16"], datasets_by_dtype["uint8"]
    assert metadata.logprob_dtype == "uint8" and metadata.format_version == 2
    assert compact.data.column("teacher_topk_ids").type == pa.list_(pa.list_(pa.uint16(), 8))
    assert compact.data.column("teacher_topk_logprobs").type == pa.list_(pa.list_(pa.uint8(), 8))
    validate_soft_label_dataset(compact, metadata=metadata, vocab_size=len(tokenizer))
    assert compact["input_ids"] == floats["input_ids"] and compact["teacher_topk_ids"] == floats["teacher_topk_ids"]
    for codes, logprobs in zip(compact["teacher_topk_logprobs"], floats["teacher_topk_logprobs"]):
        np.testing.assert_allclose(
            decode_logprobs(np.array(codes)), np.maximum(logprobs, -255 * LOGPROB_CODE_STEP), atol=0.032
        )

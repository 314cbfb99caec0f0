"""Issue 10, training side: bad soft-label data, files, folders, checkpoints and TRL expectations.

Every case uses the real SmolLM2 tokenizer, tiny real models and real `datasets`; each asserts the message a
user sees (what is wrong, where, how to fix it).
"""

from __future__ import annotations

import datasets
import pytest
from conftest import build_soft_label_dataset, make_tiny_model

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.contract import SoftLabelError


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        gradient_checkpointing=False,
        bf16=False,
        seed=0,
    )
    defaults.update(kwargs)
    return SSBConfig(**defaults)


@pytest.fixture()
def data(tokenizer):
    return build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=8, top_k=8)


def _trainer(tmp_path, tokenizer, dataset, model=None, **kwargs):
    return SSBTrainer(
        model or make_tiny_model(seed=0),
        args=_args(tmp_path, **kwargs),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def _edit_row(dataset, row, **changes):
    rows = dataset.to_list()
    rows[row].update(changes)
    edited = datasets.Dataset.from_list(rows)
    edited.info.description = dataset.info.description
    return edited


# ---- 1. soft-label rows that used to pass validation -----------------------------------------------------------


def test_duplicate_teacher_ids_are_refused(tmp_path, tokenizer, data):
    dataset, _ = data
    ids = dataset[3]["teacher_topk_ids"]
    ids[1][2] = ids[1][0]
    with pytest.raises(SoftLabelError, match=r"row 3: answer token 1 lists the teacher id \d+ twice .* distinct"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 3, teacher_topk_ids=ids))


def test_ids_sorted_by_value_instead_of_probability_are_refused(tmp_path, tokenizer, data):
    """Ids stored in ascending order (log-probs permuted with them) used to pass and zero top1_agreement."""
    dataset, _ = data
    ids, logprobs = dataset[5]["teacher_topk_ids"], dataset[5]["teacher_topk_logprobs"]
    order = [sorted(range(len(row)), key=row.__getitem__) for row in ids]
    ids = [[row[j] for j in o] for row, o in zip(ids, order)]
    logprobs = [[row[j] for j in o] for row, o in zip(logprobs, order)]
    bad = _edit_row(dataset, 5, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs)
    with pytest.raises(SoftLabelError, match="row 5: answer token 0: teacher_topk_logprobs increase along K"):
        _trainer(tmp_path, tokenizer, bad)


def test_float_teacher_ids_are_refused(tmp_path, tokenizer, data):
    dataset, _ = data
    bad = dataset.cast_column("teacher_topk_ids", datasets.List(datasets.List(datasets.Value("float32"))))
    with pytest.raises(SoftLabelError, match="stores teacher_topk_ids as float, not integers.*cast the column"):
        _trainer(tmp_path, tokenizer, bad)


def test_completion_mask_must_be_zero_or_one(tmp_path, tokenizer, data):
    """[.., 2, 0, 1, ..] has the right sum and a full tail: it passed, then broke the batch alignment mid-run."""
    dataset, _ = data
    mask = dataset[4]["completion_mask"]
    start = mask.index(1)
    mask[start], mask[start + 1] = 2, 0
    with pytest.raises(SoftLabelError, match=r"row 4: completion_mask holds the value 2 \(only 0 = prompt"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 4, completion_mask=mask))


@pytest.mark.parametrize("token_id", [10**6, -1])
def test_input_ids_outside_the_vocabulary(tmp_path, tokenizer, data, token_id):
    """Used to be a raw IndexError from the embedding, once training had started."""
    dataset, _ = data
    input_ids = dataset[2]["input_ids"]
    input_ids[1] = token_id
    with pytest.raises(SoftLabelError, match=f"row 2: input_ids holds the token id {token_id}, outside .* 49152"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 2, input_ids=input_ids))


@pytest.mark.parametrize("max_length", [0, -5])
def test_max_length_must_be_positive(tmp_path, max_length):
    with pytest.raises(ValueError, match=f"max_length must be >= 1 token .* got {max_length}"):
        _args(tmp_path, max_length=max_length)


def test_real_soft_labels_still_pass(tmp_path, tokenizer, data):
    """The new checks accept what extraction writes, float16 included (rounding keeps the order)."""
    dataset, metadata = data
    from ssb_trl.contract import features, validate_soft_label_dataset

    rows = dataset.to_list()
    for row in rows:
        row["id"], row["answer"] = "q", "1"
    half = datasets.Dataset.from_list(rows, features=features("float16"))
    validate_soft_label_dataset(half, vocab_size=49152)
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=49152)

"""Issue 10, training side: bad soft-label data, files, folders, checkpoints and TRL expectations.

Every case uses the real SmolLM2 tokenizer, tiny real models and real `datasets`; each asserts the message a
user sees (what is wrong, where, how to fix it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import datasets
import pytest
from conftest import build_soft_label_dataset, make_tiny_model

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.contract import SoftLabelError, SoftLabelMetadata, load_soft_label_dataset, save_soft_label_dataset


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


# ---- 2. files, folders, dataset types, checkpoints -------------------------------------------------------------


def test_load_a_single_arrow_or_parquet_file_with_its_metadata(tmp_path, data):
    """A file used to be 'unsupported' (.arrow) or 'has no metadata' (.parquet) although ssb_metadata.json was there."""
    dataset, metadata = data
    folder = tmp_path / "d"
    save_soft_label_dataset(dataset, str(folder), metadata)
    (arrow,) = folder.glob("data-*.arrow")
    dataset.to_parquet(str(folder / "rows.parquet"))
    for path in (arrow, folder / "rows.parquet"):
        loaded, meta = load_soft_label_dataset(str(path))
        assert meta == metadata and loaded.to_list() == dataset.to_list()
        assert SoftLabelMetadata.from_description(loaded.info.description) == metadata
    elsewhere = tmp_path / "alone.parquet"
    shutil.copy(folder / "rows.parquet", elsewhere)
    with pytest.raises(
        SoftLabelError, match=f"no ssb_metadata.json in its folder .*{tmp_path.name}.* beside the file"
    ):
        load_soft_label_dataset(str(elsewhere))


def test_one_arrow_file_of_a_sharded_folder_is_refused(tmp_path, data):
    dataset, metadata = data
    folder = tmp_path / "sharded"
    dataset.save_to_disk(str(folder), num_shards=2)
    (folder / "ssb_metadata.json").write_text(json.dumps(metadata.to_dict()))
    first = sorted(folder.glob("data-*.arrow"))[0]
    with pytest.raises(SoftLabelError, match="is 1 of the 2 files of the dataset .* Load the folder"):
        load_soft_label_dataset(str(first))
    assert len(load_soft_label_dataset(str(folder))[0]) == len(dataset)


def test_missing_split_names_the_splits(tmp_path, data):
    dataset, metadata = data
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(2))}).save_to_disk(str(folder))
    (folder / "ssb_metadata.json").write_text(json.dumps(metadata.to_dict()))
    with pytest.raises(SoftLabelError, match=r"has the splits \['train', 'test'\], not 'validation'.*--dataset_train"):
        load_soft_label_dataset(str(folder), split="validation")
    assert len(load_soft_label_dataset(str(folder), split="test")[0]) == 2


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"teacher_model": "t", "tokenizer_fingerprint": {}, "temperature": 2.0}', "metadata: top_k is missing"),
        (
            '{"teacher_model": "t", "tokenizer_fingerprint": {}, "top_k": 0, "temperature": "hot"}',
            "top_k must be an integer >= 1, got 0; temperature must be a finite number > 0, got 'hot'",
        ),
    ],
)
def test_corrupt_metadata_file(tmp_path, data, content, match):
    dataset, metadata = data
    folder = tmp_path / "d"
    save_soft_label_dataset(dataset, str(folder), metadata)
    path = folder / "ssb_metadata.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SoftLabelError, match=f"ssb_metadata.json' .*{match}.*restore ssb_metadata.json"):
        load_soft_label_dataset(str(folder))


def test_folder_of_an_unfinished_preparation_run(tmp_path):
    """The layout a stopped `ssb-trl prepare` leaves: its work folder (settings, a shard's rollouts), no dataset."""
    from ssb_trl.data.workdir import WorkDir, write_jsonl

    work = WorkDir(tmp_path / "prep")
    work.claim({"config": {"source": "questions.jsonl"}})
    write_jsonl(work.shard_path("rollouts", 0), [{"id": "q0", "correct": [True, False]}])
    with pytest.raises(
        SoftLabelError, match="did not finish.*rerunning `ssb-trl prepare` with the same settings"
    ) as e:
        load_soft_label_dataset(str(tmp_path / "prep"))
    assert f"--output_dir {tmp_path / 'prep'}" in str(e.value) and "settings.json" in str(e.value)


@pytest.mark.parametrize("argument", ["train_dataset", "eval_dataset"])
def test_dataset_dict_list_and_streaming_datasets_are_refused(tmp_path, tokenizer, data, argument):
    dataset, _ = data
    cases = [
        (
            datasets.DatasetDict({"train": dataset, "test": dataset}),
            r"DatasetDict with the splits \['train', 'test'\]",
        ),
        (dataset.to_list(), "list of 8 items, not a datasets.Dataset.*Dataset.from_list"),
        (dataset.to_iterable_dataset(), "streaming IterableDataset.*without streaming=True"),
    ]
    for bad, match in cases:
        if argument == "eval_dataset" and isinstance(bad, datasets.DatasetDict):
            continue  # a DatasetDict is a dict of named eval sets, as in Trainer (tested below)
        kwargs = {"train_dataset": dataset, argument: bad}
        with pytest.raises(TypeError, match=f"{argument} is a {match}"):
            SSBTrainer(make_tiny_model(seed=0), args=_args(tmp_path), processing_class=tokenizer, **kwargs)
    bad_member = {"held_out": dataset.to_list()}
    if argument == "eval_dataset":
        with pytest.raises(TypeError, match=r"eval_dataset\['held_out'\] is a list of 8 items"):
            SSBTrainer(
                make_tiny_model(seed=0),
                args=_args(tmp_path),
                processing_class=tokenizer,
                train_dataset=dataset,
                eval_dataset=bad_member,
            )


def test_prompt_completion_dataset_gets_told_how_to_make_soft_labels(tmp_path, tokenizer, data):
    import ssb_trl

    dataset, _ = data
    plain = dataset.select_columns(["prompt", "completion"])
    with pytest.raises(SoftLabelError) as error:
        _trainer(tmp_path, tokenizer, plain)
    message = str(error.value)
    assert "lacks the soft-label column(s)" in message and "top-K token ids and log-probs" in message
    assert "ssb-trl prepare --source" in message and "soft_label_ids_column" not in message
    for name in (
        "extract_topk_soft_labels",
        "save_soft_label_dataset",
        "load_soft_label_dataset",
        "SoftLabelMetadata",
    ):
        assert f"ssb_trl.{name}" in message and hasattr(ssb_trl, name)


def test_resume_from_a_checkpoint_without_optimizer_or_scheduler_warns(tmp_path, tokenizer, data, caplog):
    dataset, _ = data
    args = dict(max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=2)
    _trainer(tmp_path, tokenizer, dataset, **args).train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    with caplog.at_level(logging.WARNING, logger="ssb_trl"):
        _trainer(tmp_path, tokenizer, dataset, **args).train(resume_from_checkpoint=str(checkpoint))
    assert "RESUMING WITHOUT OPTIMIZER STATE" not in caplog.text  # both files there: no warning
    for name in ("optimizer.pt", "scheduler.pt"):
        shutil.copytree(checkpoint, tmp_path / name)
        os.remove(tmp_path / name / name)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ssb_trl"):
            resumed = _trainer(tmp_path, tokenizer, dataset, **args)
            resumed.train(resume_from_checkpoint=str(tmp_path / name))
        assert f"RESUMING WITHOUT OPTIMIZER STATE: checkpoint {tmp_path / name} has no {name}" in caplog.text
        assert "learning-rate schedule restart from scratch" in caplog.text
        assert resumed.state.global_step == 2

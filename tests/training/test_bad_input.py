"""Issue 10, training side: bad soft-label data, files, folders, checkpoints and TRL expectations.

Every case uses the real SmolLM2 tokenizer, tiny real models and real `datasets`; each asserts the message a
user sees (what is wrong, where, how to fix it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import datasets
import pytest
import torch

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.label.job import LabelJob
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.io import load_soft_label_dataset, save_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelError, SoftLabelMetadata
from tests.helpers import build_soft_label_dataset, make_tiny_model


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
    from ssb_trl.soft_labels.checks import validate_soft_label_dataset
    from ssb_trl.soft_labels.schema import features

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
    from ssb_trl.jobs.workdir import write_jsonl

    work = PrepareJob.work_dir(tmp_path / "prep")
    work.write_settings({"kind": "ssb-trl prepare", "config": {"dataset_name": "questions.jsonl"}})
    write_jsonl(work.shard_path("rollouts", 0), [{"id": "q0", "correct": [True, False]}])
    with pytest.raises(
        SoftLabelError, match="did not finish.*rerunning `ssb-trl prepare` with the same settings"
    ) as e:
        load_soft_label_dataset(str(tmp_path / "prep"))
    assert f"--output_dir {tmp_path / 'prep'}" in str(e.value) and "settings.json" in str(e.value)


def test_folder_of_an_unfinished_label_run_names_the_label_command(tmp_path):
    """A stopped `ssb-trl label` leaves the same layout; its settings say which command resumes it."""
    from ssb_trl.storage import write_json

    work = LabelJob.work_dir(tmp_path / "labelled")
    write_json(work.settings_path, {"kind": "ssb-trl label", "config": {"dataset_name": "rows.jsonl"}})
    with pytest.raises(SoftLabelError, match="`ssb-trl label` run that did not finish.*rerunning `ssb-trl label`"):
        load_soft_label_dataset(str(tmp_path / "labelled"))


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
    assert "ssb-trl prepare --dataset_name" in message and "soft_label_ids_column" not in message
    assert "ssb-trl label --dataset_name" in message
    assert "ssb_trl.soft_labels.extract_topk_soft_labels" in message
    for name in (
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


# ---- 3. what a TRL user expects: compute_metrics, predict, metric prefixes ---------------------------------------


def _mean_answer_length(dataset):
    return sum(sum(row["completion_mask"]) for row in dataset) / len(dataset)


def _dense_logits(model, dataset):
    """The reference: the unpatched forward's full logits per row (what SFTTrainer hands to compute_metrics)."""
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0] for row in dataset]


def test_compute_metrics_gets_the_student_logits_as_from_sft(tmp_path, tokenizer, data):
    """An SFT compute_metrics does np.argmax(logits, -1): it gets [rows, seq, vocab] logits, padded per batch."""
    dataset, _ = data
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction)
        preds, labels = prediction.predictions.argmax(-1)[:, :-1], prediction.label_ids[:, 1:]
        answer = labels != -100
        return {"token_accuracy": float((preds[answer] == labels[answer]).mean())}

    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path, per_device_eval_batch_size=3),  # 8 rows: batches of unequal widths are padded
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()
    (prediction,) = seen
    width = max(len(r["input_ids"]) for r in dataset)
    assert prediction.predictions.shape == (8, width, 49152) and prediction.label_ids.shape == (8, width)
    reference = _dense_logits(trainer.model, dataset)
    for row, logits, labels, dense in zip(dataset, prediction.predictions, prediction.label_ids, reference):
        n, mask = len(row["input_ids"]), torch.tensor(row["completion_mask"])
        assert (labels[:n] == torch.where(mask.bool(), torch.tensor(row["input_ids"]), -100).numpy()).all()
        torch.testing.assert_close(torch.from_numpy(logits[:n]), dense, rtol=1e-5, atol=1e-5)
    assert 0.0 <= metrics["eval_token_accuracy"] <= 1.0 and "eval_kd_loss" in metrics


def test_preprocess_logits_for_metrics_runs_on_each_batch(tmp_path, tokenizer, data):
    """As in Trainer: it gets each batch's logits and labels, and predict returns what it made of them."""
    dataset, _ = data
    calls = []

    def preprocess_logits_for_metrics(logits, labels):
        calls.append((tuple(logits.shape), tuple(labels.shape)))
        return logits.argmax(-1)

    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path, per_device_eval_batch_size=3),
        train_dataset=dataset,
        processing_class=tokenizer,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    predicted = trainer.predict(dataset)
    assert [logits[0] for logits, _ in calls] == [3, 3, 2] and all(shape[2] == 49152 for shape, _ in calls)
    assert all(logits[:2] == labels for logits, labels in calls)
    assert predicted.predictions.shape == predicted.label_ids.shape
    for row, ids, dense in zip(dataset, predicted.predictions, _dense_logits(trainer.model, dataset)):
        n = len(row["input_ids"])
        assert (ids[:n] == dense.argmax(-1).numpy()).all()


def test_predict_returns_predictions_and_does_not_leak_into_evaluate(tmp_path, tokenizer, data):
    dataset, _ = data
    lengths = sorted(range(8), key=lambda i: sum(dataset[i]["completion_mask"]))
    short, long = dataset.select(lengths[:4]), dataset.select(lengths[4:])
    assert _mean_answer_length(short) < _mean_answer_length(long)
    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path),
        train_dataset=dataset,
        eval_dataset=short,
        processing_class=tokenizer,
    )
    trainer.model.eval()
    predicted = trainer.predict(long)
    assert predicted.predictions is not None and predicted.label_ids is not None
    assert predicted.predictions.shape == (*predicted.label_ids.shape, 49152)  # logits, as SFTTrainer.predict
    assert predicted.metrics["test_mean_answer_length"] == pytest.approx(_mean_answer_length(long))
    assert {"test_kd_loss", "test_ce_loss", "test_top1_agreement"} <= set(predicted.metrics)
    assert not any(key.startswith("eval_") for key in predicted.metrics)
    metrics = trainer.evaluate()
    assert metrics["eval_mean_answer_length"] == pytest.approx(_mean_answer_length(short))


def test_ssb_metrics_follow_the_names_of_an_eval_dataset_dict(tmp_path, tokenizer, data):
    dataset, _ = data
    sets = {"small": dataset.select(range(2)), "rest": dataset.select(range(2, 8))}
    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path, eval_strategy="steps", eval_steps=1),
        train_dataset=dataset,
        eval_dataset=sets,
        processing_class=tokenizer,
    )
    trainer.train()  # evaluates each set after the step
    logged = {key for entry in trainer.state.log_history for key in entry}
    for name, subset in sets.items():
        assert {f"eval_{name}_kd_loss", f"eval_{name}_top1_agreement", f"eval_{name}_ce_loss"} <= logged
        entry = next(e for e in trainer.state.log_history if f"eval_{name}_mean_answer_length" in e)
        assert entry[f"eval_{name}_mean_answer_length"] == pytest.approx(_mean_answer_length(subset))
    assert "eval_kd_loss" not in logged
    metrics = trainer.evaluate(metric_key_prefix="final")
    assert "final_small_kd_loss" in metrics and "final_rest_kd_loss" in metrics


# ---- 3b. the model card and the adapter name their base model --------------------------------------------------


def test_the_bundled_model_by_name_trains_and_its_adapter_reloads_offline(tmp_path, data, caplog):
    """`SSBTrainer(model="bundled:...")` loads (it raised OSError); the adapter records the bundled model's cache
    folder, a plain transformers folder, so PEFT's and transformers' own loaders reload it offline."""
    from peft import AutoPeftModelForCausalLM, LoraConfig
    from transformers import pipeline

    from ssb_trl.eval.model_specs import parse_model_specs
    from ssb_trl.models import BUNDLED_MODEL, bundled_model_dir, is_bundled_model, resolve_model_path

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    caplog.set_level(logging.INFO)
    cache = str(bundled_model_dir())
    trainer = SSBTrainer(
        BUNDLED_MODEL,  # no processing_class: the tokenizer comes from the model, as with SFTTrainer
        args=_args(tmp_path, per_device_train_batch_size=2),
        train_dataset=data[0].select(range(2)),
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "ssb-adapter"))
    adapter_config = json.loads((tmp_path / "ssb-adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == cache
    assert not [r for r in caplog.records if r.name.startswith("ssb_trl") and r.levelno >= logging.WARNING]

    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "ssb-adapter"))
    ids = torch.tensor([data[0][0]["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)
    generator = pipeline("text-generation", model=str(tmp_path / "ssb-adapter"))
    assert generator("2 + 2 =", max_new_tokens=2, do_sample=False)[0]["generated_text"].startswith("2 + 2 =")

    card = (tmp_path / "ssb-adapter" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and cache not in card
    (spec,) = parse_model_specs([f"ssb={tmp_path / 'ssb-adapter'}"])  # evaluation loads the same base
    assert spec.adapter_base == cache
    # On another machine the recorded folder does not exist: ssb-trl maps it to that machine's copy.
    elsewhere = "/home/someone/.cache/ssb_trl/" + os.path.basename(cache)
    assert is_bundled_model(elsewhere) and resolve_model_path(elsewhere) == cache


def test_loading_the_bundled_model_is_an_info_notice_not_a_warning(caplog):
    """Every run logged it at WARNING, though nothing is wrong when the user asks for the bundled model."""
    from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer

    caplog.set_level(logging.INFO)
    load_model_and_tokenizer(BUNDLED_MODEL, device="cpu")
    notices = [r for r in caplog.records if r.getMessage().startswith("Using the bundled model")]
    assert [r.levelno for r in notices] == [logging.INFO]


def test_model_card_names_a_local_or_hub_base_model(tmp_path, tokenizer, data):
    dataset = data[0].select(range(2))
    local = tmp_path / "my-base"
    make_tiny_model(seed=0).save_pretrained(local)
    tokenizer.save_pretrained(local)
    hub = make_tiny_model(seed=0)
    hub.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as from_pretrained(<Hub id>) sets it
    for model, expected in (
        (str(local), f"fine-tuned version of `{local}` (a local model)"),
        (hub, "fine-tuned version of [HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/"),
        (make_tiny_model(seed=0), "fine-tuned version of a model built from its config"),
    ):
        trainer = SSBTrainer(
            model,
            args=_args(tmp_path, per_device_train_batch_size=2),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.save_model(str(tmp_path / "saved"))
        card = (tmp_path / "saved" / "README.md").read_text()
        assert "# Model Card for saved" in card and expected in card, card[:600]
        assert "huggingface.co/None" not in card and "for None" not in card
        assert f'model="{tmp_path / "saved"}"' in card  # the quick start loads the saved folder


# ---- found by a further hostile pass ---------------------------------------------------------------------------


def test_null_values_are_refused_not_turned_into_ids(tmp_path, tokenizer, data):
    """A null id became NaN in numpy and passed every comparison; a null token row crashed with a raw ValueError."""
    dataset, _ = data
    ids = dataset[6]["teacher_topk_ids"]
    ids[2][3] = None
    with pytest.raises(SoftLabelError, match=r"row 6: teacher_topk_ids holds a missing \(null\) value"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 6, teacher_topk_ids=ids))
    ids[2] = None
    with pytest.raises(SoftLabelError, match=r"row 6: teacher_topk_ids holds a missing \(null\) value"):
        _trainer(tmp_path, tokenizer, _edit_row(dataset, 6, teacher_topk_ids=ids))


def test_a_boolean_completion_mask_is_accepted(tmp_path, tokenizer, data):
    dataset, _ = data
    rows = dataset.to_list()
    for row in rows:
        row["completion_mask"] = [bool(v) for v in row["completion_mask"]]
    as_bool = datasets.Dataset.from_list(rows)
    as_bool.info.description = dataset.info.description
    assert as_bool.features["completion_mask"].feature.dtype == "bool"
    trainer = _trainer(tmp_path, tokenizer, as_bool, per_device_train_batch_size=2)
    trainer.train()
    assert trainer.state.log_history[0]["mean_answer_length"] > 0


def test_max_length_below_every_prompt_says_so(tmp_path, tokenizer, data):
    dataset, _ = data
    with pytest.raises(SoftLabelError, match=r"no row left after truncation to max_length=5: its shortest prompt has"):
        _trainer(tmp_path, tokenizer, dataset, max_length=5)


# ---- issue 17: eval sets' metadata, zero-step runs, SFT settings SSB would ignore --------------------------------


def _with_metadata(dataset, metadata, **changes):
    """A copy of `dataset` whose metadata says it was made differently (another tokenizer, temperature...)."""
    copy = dataset.select(range(len(dataset)))
    copy.info.description = SoftLabelMetadata.from_dict({**metadata.to_dict(), **changes}).to_description()
    return copy


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"tokenizer_fingerprint": {"vocab_size": 151665, "sha256": "0123456789abcdef"}},
            "the soft labels were made with another tokenizer",
        ),
        ({"temperature": 1.0}, "the soft labels were taken at temperature 1.0 but SSBConfig.temperature is 2.0"),
    ],
)
def test_eval_sets_are_checked_against_the_run_like_the_training_set(tmp_path, tokenizer, data, changes, match):
    """Only the training set's metadata was checked: these eval sets were evaluated silently."""
    dataset, metadata = data
    other = _with_metadata(dataset, metadata, **changes)
    for eval_dataset, name in (
        (other, "eval_dataset"),
        ({"fine": dataset, "held_out": other}, "eval_dataset['held_out']"),
    ):
        with pytest.raises(SoftLabelError, match=f"^{re.escape(name)}: {match}"):
            SSBTrainer(
                make_tiny_model(seed=0),
                args=_args(tmp_path),
                train_dataset=dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
            )
    trainer = _trainer(tmp_path, tokenizer, dataset)
    with pytest.raises(SoftLabelError, match=f"^eval_dataset: {match}"):
        trainer.evaluate(other)
    with pytest.raises(SoftLabelError, match=f"^test_dataset: {match}"):
        trainer.predict(other)


def test_eval_set_at_another_temperature_is_refused_even_when_renormalising(tmp_path, tokenizer, data):
    """With allow_temperature_renormalization one rescaling factor (from the training data) serves every batch."""
    dataset, metadata = data
    other = _with_metadata(dataset, metadata, temperature=1.0)
    with pytest.raises(SoftLabelError, match="eval_dataset: .* at temperature 1.0, the training data's at 2.0"):
        SSBTrainer(
            make_tiny_model(seed=0),
            args=_args(tmp_path, temperature=1.0, allow_temperature_renormalization=True),
            train_dataset=dataset,
            eval_dataset=other,
            processing_class=tokenizer,
        )


def test_eval_set_with_another_k_is_validated_with_its_own(tmp_path, tokenizer, data):
    """An eval set stored with fewer ids per token (K=4) is a valid set: its rows are checked against its K."""
    dataset, metadata = data
    rows = dataset.to_list()
    for row in rows:
        row["teacher_topk_ids"] = [r[:4] for r in row["teacher_topk_ids"]]
        row["teacher_topk_logprobs"] = [r[:4] for r in row["teacher_topk_logprobs"]]
    small = datasets.Dataset.from_list(rows)
    small.info.description = SoftLabelMetadata.from_dict({**metadata.to_dict(), "top_k": 4}).to_description()
    trainer = SSBTrainer(
        make_tiny_model(seed=0),
        args=_args(tmp_path),
        train_dataset=dataset,
        eval_dataset=small,
        processing_class=tokenizer,
    )
    assert trainer.evaluate()["eval_kd_loss"] > 0


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(num_train_epochs=-1, max_steps=-1), r"num_train_epochs=-1 with max_steps=-1 \(= use the epochs\)"),
        (dict(num_train_epochs=0), r"num_train_epochs=0 with max_steps=-1"),
        (dict(max_steps=0), r"max_steps=0 \(a max_steps >= 0 overrides num_train_epochs\)"),
    ],
)
def test_settings_that_train_zero_steps_are_refused(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match + ".* trains 0 steps"):
        _args(tmp_path, **{"max_steps": -1, **settings})


def test_a_training_set_smaller_than_one_dropped_batch_is_refused(tmp_path, tokenizer, data):
    dataset, _ = data
    trainer = _trainer(tmp_path, tokenizer, dataset, per_device_train_batch_size=16, dataloader_drop_last=True)
    with pytest.raises(ValueError, match="has 8 rows, fewer than one batch of 16 .* training would take 0 steps"):
        trainer.train()
    assert trainer.state.global_step == 0 and not os.path.exists(tmp_path / "out" / "model.safetensors")


@pytest.mark.parametrize(
    "setting, value",
    [
        ("truncation_mode", "keep_end"),
        ("assistant_only_loss", True),
        ("completion_only_loss", False),
        ("dataset_text_field", "content"),
        ("chat_template_path", "template.jinja"),
        ("eval_packing", True),
    ],
)
def test_sft_settings_that_mean_nothing_for_ssb_are_refused(tmp_path, setting, value):
    with pytest.raises(ValueError, match=f"would be silently ignored: {setting}={value!r} \\("):
        _args(tmp_path, **{setting: value})
    _args(tmp_path, truncation_mode="keep_start", completion_only_loss=True)  # the defaults' meaning is fine


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only default is what is tested")
def test_bf16_without_a_gpu_trains_in_float32_or_says_how(tmp_path) -> None:
    """TRL's default bf16=True stopped CPU runs with transformers' "Your setup doesn't support bf16/gpu"."""
    assert SSBConfig(output_dir=str(tmp_path)).bf16 is False  # left unset: float32, logged
    with pytest.raises(ValueError, match=r"pass --bf16 false to train in float32 here, or --use_cpu true"):
        SSBConfig(output_dir=str(tmp_path), bf16=True)
    assert SSBConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True).bf16 is True  # CPU autocast, as asked


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "must be >= 0 and not both 0"),
        ({"beta": 2.0}, r"beta must be in \[0, 1\]"),
        ({"learning_rate": -1.0}, "learning_rate must be >= 0.0, got -1.0"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be >= 1, got 0"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be >= 1, got 0"),
    ],
)
def test_loss_and_batch_settings_are_refused_when_parsed(tmp_path, settings, message) -> None:
    """These passed the config and failed only after the data and model loaded (or inside torch's optimizer)."""
    with pytest.raises(ValueError, match=message):
        SSBConfig(output_dir=str(tmp_path), bf16=False, **settings)

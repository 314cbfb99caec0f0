"""The model card is true to the data: SSB data gets an SSB card, `ssb-trl label` data an offline-distillation one.

Both datasets are made by the real producers (`prepare_ssb_data` with the bigram digit model of tests/helpers.py,
`label_dataset` with a tiny teacher), a tiny student trains one step on each, and the saved card is read back
with huggingface_hub.
"""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.label.job import label_dataset
from ssb_trl.prepare import prepare_ssb_data
from ssb_trl.soft_labels.io import load_soft_label_dataset
from tests.helpers import (
    GOLDS,
    ROWS,
    label_config,
    make_digit_model,
    make_tiny_model,
    small_config,
    write_questions,
    write_rows,
)

SSB_CLAIMS = ("Semantic Soft Bootstrapping", "2512.05105", "mitra2025ssb", "Hint gain", "teacher_hint", "ootstrap")


def _train_and_card(tmp_path, tokenizer, data_dir, **settings):
    dataset, metadata = load_soft_label_dataset(str(data_dir))
    args = SSBConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        temperature=metadata.temperature,
        **settings,
    )
    trainer = SSBTrainer(make_tiny_model(seed=0), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    card = ModelCard.load(tmp_path / "model" / "README.md")
    return trainer, card, metadata


@pytest.fixture(scope="module")
def ssb_data(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    root = tmp_path_factory.mktemp("ssb_data")
    questions = write_questions(root / "q.jsonl", GOLDS)
    config = small_config(root, questions, teacher_hint="answer_only")
    prepare_ssb_data(config, model=make_digit_model(tokenizer), tokenizer=tokenizer, show_progress=False)
    return root / "out"


def test_ssb_data_gets_the_ssb_card(tmp_path, tokenizer, ssb_data):
    trainer, card, metadata = _train_and_card(tmp_path, tokenizer, ssb_data)
    gain = metadata.source["hint_gain"]
    assert gain is not None  # preparation measured it: the card must report it
    text = card.text
    assert "This model was trained with SSB, a method introduced in [Semantic Soft Bootstrapping" in text
    assert "hint (format `answer_only`" in text
    interval = f"{gain['gain_points']:+.1f} points [{gain['gain_low']:+.1f}, {gain['gain_high']:+.1f}] (95%)"
    assert f"{interval}: {gain['verdict']}." in text
    assert "@article{mitra2025ssb" in text and "K = 8, at temperature T = 2.0" in text
    assert "`digit-model`" in text  # the teacher, as recorded
    assert {"ssb", "ssb-trl", "distillation", "trl"} <= set(card.data.tags)
    assert "ssb" in trainer.model.model_tags  # the model's own tags, added by SFTTrainer from _tag_names


def test_label_data_gets_an_offline_distillation_card_without_ssb_claims(tmp_path, tokenizer, tokenizer_dir):
    from ssb_trl.models import load_tokenizer

    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    teacher = make_tiny_model(seed=3, hidden_size=16).eval()
    label_dataset(label_config(tmp_path, data), teacher, load_tokenizer(tokenizer_dir), show_progress=False)
    trainer, card, metadata = _train_and_card(tmp_path, tokenizer, tmp_path / "out", ce_weight=0.5)
    assert metadata.source["kind"] == "ssb-trl label"
    text = card.text
    for claim in SSB_CLAIMS:
        assert claim not in text, claim
    assert "This model was trained with offline distillation, a method introduced in [Distilling the Knowledge" in text
    assert "The teacher `tiny-teacher` labelled a prompt/completion dataset" in text
    assert "K = 8, at temperature T = 2.0" in text
    assert "`1.0 * T^2 * D + 0.5 * CE` per answer token" in text
    assert "D is KL(teacher || student) at T = 2.0" in text
    assert "ssb" not in card.data.tags and {"ssb-trl", "distillation"} <= set(card.data.tags)
    assert "ssb" not in trainer.model.model_tags


def test_the_sft_baseline_card_says_the_soft_labels_were_unused(tmp_path, tokenizer, tokenizer_dir):
    from ssb_trl.models import load_tokenizer

    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    teacher = make_tiny_model(seed=3, hidden_size=16).eval()
    label_dataset(label_config(tmp_path, data), teacher, load_tokenizer(tokenizer_dir), show_progress=False)
    _, card, _ = _train_and_card(tmp_path, tokenizer, tmp_path / "out", kd_weight=0.0, ce_weight=1.0)
    assert "This model was trained with SFT on a teacher's answers." in card.text
    assert "the soft labels did not enter the loss" in card.text and "Distilling the Knowledge" not in card.text
    assert "sft" in card.data.tags and "distillation" not in card.data.tags

"""Integer settings hold integers in every settings dataclass: a YAML `num_rollouts: 2.5` is refused naming the
field (it used to pass `>= 2` and fail later, or be used: `max_new_tokens: 16.9`); `3.0` is taken as 3."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ssb_trl import SSBConfig
from ssb_trl.eval import EvalConfig
from ssb_trl.generation import Sampling
from ssb_trl.prepare import PrepConfig
from ssb_trl.scripts.common import parse_settings
from ssb_trl.tasks import QuestionSource
from ssb_trl.validation import integer_fields, require_integers

PREP = {"dataset_name": "questions.jsonl", "model_name_or_path": "bundled:smollm2-135m-instruct"}
EVAL = {"dataset_name": "questions.jsonl", "models": ["bundled:smollm2-135m-instruct"]}
CASES = [  # (settings class, required fields, an int field of its own, one from a mixed-in class)
    (PrepConfig, PREP, "rollout_max_new_tokens", "num_questions"),
    (PrepConfig, PREP, "num_rollouts", "vllm_server_max_concurrency"),  # EngineConfig's
    (EvalConfig, EVAL, "max_new_tokens", "max_question_chars"),
    (Sampling, {}, "max_new_tokens", "n"),
    (QuestionSource, {}, "source_seed", "num_questions"),
    (SSBConfig, {"output_dir": "out", "use_cpu": True, "bf16": False}, "per_device_train_batch_size", "max_length"),
]


@pytest.mark.parametrize(("cls", "required", "own", "other"), CASES)
@pytest.mark.parametrize("value", [2.5, 16.9, True, "3"])
def test_non_integer_is_refused_naming_the_field(cls, required, own, other, value) -> None:
    with pytest.raises(
        ValueError,
        match=rf"{cls.__name__}: these settings take whole numbers, got {re.escape(own + '=' + repr(value))}",
    ):
        cls(**required, **{own: value})
    with pytest.raises(ValueError, match=re.escape(f"{other}={value!r}")):
        cls(**required, **{other: value})


@pytest.mark.parametrize(("cls", "required", "own", "other"), CASES)
def test_whole_float_is_taken_as_int(cls, required, own, other) -> None:
    settings = cls(**required, **{own: 16.0, other: 8.0})
    assert getattr(settings, own) == 16 and type(getattr(settings, own)) is int
    assert getattr(settings, other) == 8 and type(getattr(settings, other)) is int


def test_only_plain_integer_annotations_count() -> None:
    @dataclass
    class Settings:
        count: int = 1
        maybe: int | None = None
        mixed: int | str = "auto"  # takes other values too: not checked
        ratio: float = 0.5
        flag: bool = False

    assert integer_fields(Settings) == ("count", "maybe")
    settings = Settings(mixed=2.5, ratio=2.0)
    require_integers(settings)
    assert settings.mixed == 2.5 and settings.ratio == 2.0


def test_yaml_floats_through_the_recipe_parsers_name_the_setting(tmp_path: Path) -> None:
    """The parsers see YAML values as they are (argparse converts only strings); every parsed dataclass is
    checked, also TRL's ModelConfig, which has no check of its own."""
    from ssb_trl.scripts.prepare import make_parser as prepare_parser
    from ssb_trl.scripts.train import make_parser as train_parser

    config = tmp_path / "prep.yaml"
    config.write_text("source: q.jsonl\nmodel_name_or_path: m\nrollout_max_new_tokens: 16.9\nshard_size: 4.0\n")
    with pytest.raises(SystemExit, match="1"):
        parse_settings(prepare_parser(), ["--config", str(config)], "prepare")
    config.write_text("source: q.jsonl\nmodel_name_or_path: m\nshard_size: 4.0\n")
    _, (prep,) = parse_settings(prepare_parser(), ["--config", str(config)], "prepare")
    assert prep.shard_size == 4 and type(prep.shard_size) is int

    config.write_text("output_dir: out\nuse_cpu: true\nbf16: false\nuse_peft: true\nlora_r: 2.5\n")
    with pytest.raises(SystemExit, match="1"):
        parse_settings(train_parser(), ["--config", str(config)], "train")


def test_parse_error_message_names_the_field(tmp_path: Path, capsys) -> None:
    from ssb_trl.scripts.train import make_parser as train_parser

    config = tmp_path / "train.yaml"
    config.write_text("output_dir: out\nuse_cpu: true\nbf16: false\nuse_peft: true\nlora_r: 2.5\n")
    with pytest.raises(SystemExit):
        parse_settings(train_parser(prog="ssb-trl train"), ["--config", str(config)], "train")
    assert (
        "ssb-trl train: error: ModelConfig: these settings take whole numbers, got lora_r=2.5"
        in capsys.readouterr().err
    )

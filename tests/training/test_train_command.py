"""The training recipe (ssb_trl/scripts/train.py): config parsing, a real run, multi-process DDP (through the
recipes/ shim) and DeepSpeed ZeRO-2/3 (through `ssb-trl train`) launches on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ssb_trl.scripts import train as train_ssb
from ssb_trl.soft_labels.io import save_soft_label_dataset
from tests.helpers import build_soft_label_dataset, make_tiny_model

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]):
    return train_ssb.make_parser().parse_args_and_config(argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer_dir):
    """A tiny model directory (real SmolLM2 tokenizer) and a soft-label dataset of 8 rows on disk."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("recipe")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_tiny_model(seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    teacher = make_tiny_model(seed=1)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(30.0)
    dataset, metadata = build_soft_label_dataset(teacher, tokenizer, n_rows=8, top_k=8)
    save_soft_label_dataset(dataset, str(root / "data"), metadata)
    return root


def _flags(workdir, out, **extra):
    flags = {
        "dataset_name": workdir / "data",
        "model_name_or_path": workdir / "model",
        "output_dir": out,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "use_cpu": "true",
        "bf16": "false",
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "gradient_checkpointing": "false",
        "seed": 0,
    }
    flags.update(extra)
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def test_shipped_configs_parse_into_the_dataclasses():
    for name in ("demo.yaml", "qwen2.5-3b-instruct_gsm8k.yaml"):
        script, training, model = parse(
            ["--config", str(ROOT / "recipes/configs" / name), "--use_cpu", "true", "--bf16", "false"]
        )[:3]
        assert training.temperature == 2.0 and script.dataset_name
    _, training, model = parse(
        [
            "--config",
            str(ROOT / "recipes/configs/qwen2.5-3b-instruct_gsm8k.yaml"),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
        ]
    )[:3]
    assert model.use_peft and model.lora_r == 32 and model.lora_alpha == 32 and training.learning_rate == 2e-4
    assert (
        training.num_train_epochs == 3
        and training.per_device_train_batch_size * training.gradient_accumulation_steps == 4
    )


def test_unknown_yaml_key_is_an_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset_name: x\ntemprature: 2.0\n")
    with pytest.raises(ValueError, match="temprature"):
        parse(["--config", str(config), "--use_cpu", "true", "--bf16", "false"])


def test_recipe_trains_saves_card_and_log(workdir, tmp_path):
    out = tmp_path / "run"
    args = parse(
        _flags(
            workdir,
            out,
            max_steps=2,
            use_peft="true",
            lora_r=4,
            lora_alpha=8,
            merge_adapter="true",
            eval_fraction=0.25,
            eval_strategy="steps",
            eval_steps=1,
        )
    )
    train_ssb.main(*args[:3])
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    card = (out / "README.md").read_text()
    assert "Training settings" in card and "tiny-random-teacher" in card
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("kd_loss" in entry for entry in history) and any("eval_kd_loss" in entry for entry in history)


def test_plain_dataset_is_refused_before_training(workdir, tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "q", "completion": "a"}]).save_to_disk(tmp_path / "plain")
    with pytest.raises(
        ValueError, match=r"lacks the soft-label column.* \(it has \['prompt', 'completion'\]\).*`ssb-trl label"
    ):
        train_ssb.main(*parse(_flags(workdir, tmp_path / "o", dataset_name=tmp_path / "plain"))[:3])


def _soft_label_rows(workdir, n_rows: int, seed: int):
    """Soft-label rows from the module's teacher tokenizer (another seed: other questions), and their metadata."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    return build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=n_rows, top_k=8, seed=seed)


def test_a_test_split_is_the_eval_set(workdir, tmp_path):
    """--dataset_test_split (TRL's name) evaluates on a split apart from training, from a saved DatasetDict."""
    from datasets import DatasetDict

    train, metadata = _soft_label_rows(workdir, 6, seed=0)
    test, _ = _soft_label_rows(workdir, 3, seed=5)
    DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "data")
    (tmp_path / "data" / "ssb_metadata.json").write_text(json.dumps(metadata.to_dict()))
    flags = _flags(workdir, tmp_path / "run", dataset_name=tmp_path / "data", dataset_test_split="test")
    trainer = train_ssb.main(*parse([*flags, "--eval_strategy", "steps", "--eval_steps", "1"])[:3])
    assert len(trainer.train_dataset) == 6 and len(trainer.eval_dataset) == 3
    entry = next(e for e in trainer.state.log_history if "eval_kd_loss" in e)
    answers = [sum(row["completion_mask"]) for row in test]
    assert entry["eval_mean_answer_length"] == pytest.approx(sum(answers) / len(answers))


def test_a_configuration_of_a_hub_style_folder(workdir, tmp_path):
    """--dataset_config picks a configuration (the `name` of load_dataset), with its own splits and metadata."""
    root = tmp_path / "hub"
    sizes = {"easy": (4, 2), "hard": (6, 3)}
    lines = ["---", "configs:"]
    for index, (config, (n_train, n_test)) in enumerate(sizes.items()):
        (root / config).mkdir(parents=True)
        for split, n in (("train", n_train), ("test", n_test)):
            rows, metadata = _soft_label_rows(workdir, n, seed=10 * index + n)
            rows.to_parquet(root / config / f"{split}.parquet")
        (root / config / "ssb_metadata.json").write_text(json.dumps(metadata.to_dict()))
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {config}/{split}.parquet" for split in ("train", "test")]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    flags = _flags(workdir, tmp_path / "run", dataset_name=root, dataset_config="hard", dataset_test_split="test")
    trainer = train_ssb.main(*parse(flags)[:3])
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == sizes["hard"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (
            {"dataset_test_split": "test", "eval_fraction": 0.25},
            "--dataset_test_split 'test' and --eval_fraction 0.25 both make an eval set: pass one of them",
        ),
        (
            {"dataset_config": "hard"},
            "--dataset_config 'hard': .* was saved with save_to_disk, .* drop --dataset_config",
        ),
        ({"eval_strategy": "steps"}, "--eval_strategy steps evaluates during training, but there is no eval set"),
        ({"dataset_test_split": "test"}, "--dataset_test_split 'test': .* holds one split, the training data"),
    ],
)
def test_eval_set_flags_that_cannot_work_are_refused(workdir, tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        train_ssb.main(*parse(_flags(workdir, tmp_path / "run", **extra))[:3])


def _cpu_accelerate_config(name: str, tmp_path: Path) -> Path:
    """A shipped GPU-first config (TRL's, by name) with the keys CPU runs need (MULTI_GPU + use_cpu over gloo)."""
    from ssb_trl.cli import accelerate_config_path

    config = yaml.safe_load(Path(accelerate_config_path(name)).read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# The CPU keys of a DeepSpeed launch as accelerate flags (the training flags hold use_cpu). Not accelerate's --cpu:
# it routes the launch to a single process, and the run would pass as one.
CPU_DEEPSPEED_FLAGS = ["--num_processes", "2", "--mixed_precision", "no"]


def _launch(config: Path | str, flags: list[str], through_cli: bool = False) -> subprocess.CompletedProcess:
    """`accelerate launch recipes/train_ssb.py`, or `ssb-trl train` passing the accelerate flags through; `config`
    is a YAML path, or through the CLI the name of a DeepSpeed config for --accelerate_config."""
    if through_cli and isinstance(config, str):
        cmd = [sys.executable, "-m", "ssb_trl", "train", *flags, "--accelerate_config", config, *CPU_DEEPSPEED_FLAGS]
    elif through_cli:
        cmd = [sys.executable, "-m", "ssb_trl", "train", *flags, "--config_file", str(config)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += [str(ROOT / "recipes/train_ssb.py"), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def _weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def _first_loss(out: Path) -> float:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return next(entry["loss"] for entry in history if "loss" in entry)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(workdir, tmp_path):
    """2 processes x batch 4 == 1 process x batch 8 after one SGD step: the loss is a per-token mean overall."""
    single = tmp_path / "single"
    train_ssb.main(*parse(_flags(workdir, single, per_device_train_batch_size=8))[:3])
    ddp = tmp_path / "ddp"
    # Two unsynchronised processes would each step on 4 rows only, and the saved weights would differ.
    _launch(_cpu_accelerate_config("multi_gpu", tmp_path), _flags(workdir, ddp))
    a, b = _weights(single), _weights(ddp)
    initial = make_tiny_model(seed=0).state_dict()
    assert any(not torch.allclose(a[k], initial[k]) for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert _first_loss(single) == pytest.approx(_first_loss(ddp), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepspeed_zero2", "zero3"])  # an old name (renamed, with a warning) and TRL's
def test_deepspeed_zero_on_two_cpu_processes(workdir, tmp_path, name):
    """`ssb-trl train --accelerate_config NAME`: TRL's shipped DeepSpeed configs, the CPU keys as accelerate flags."""
    out = tmp_path / "ds"
    result = _launch(
        name, _flags(workdir, out, max_steps=2, learning_rate=1e-2, optim="adamw_torch"), through_cli=True
    )
    assert (out / "README.md").exists()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and all(0 < loss < 1e4 for loss in losses)
    assert history[0]["epoch"] == 1.0  # 8 rows in one step: 2 processes x batch 4, not one process
    warnings = [line for line in result.stderr.splitlines() if "warning: --accelerate_config" in line]
    if name == "deepspeed_zero2":  # once, by the command the user ran (not again by each launched process)
        assert warnings == [
            "ssb-trl train: warning: --accelerate_config deepspeed_zero2 is renamed --accelerate_config zero2; the old "
            "name stops working in 0.3"
        ]
    else:
        assert warnings == []

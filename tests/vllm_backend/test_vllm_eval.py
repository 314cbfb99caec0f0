"""Evaluation through vLLM, a LoRA adapter included (merged into its base), against the transformers backend."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed in this environment; `make test` runs tests/vllm_backend in its own"
)

from peft import LoraConfig, get_peft_model  # noqa: E402

from ssb_trl.eval import EvalConfig, run_evaluation  # noqa: E402
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA adapter on the bundled model whose B matrices are random, so it changes the answers."""
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu", dtype="float32")
    config = LoraConfig(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _greedy_texts(report: dict, label: str) -> list[str]:
    model = next(m for m in report["models"] if m["label"] == label)
    return [record["greedy"]["text"] for record in model["records"]]


def test_vllm_evaluation_matches_transformers_for_base_and_adapter(adapter_dir: Path, tmp_path: Path) -> None:
    common = {
        "dataset_name": "reasoning_gym:basic_arithmetic",
        "task_config": '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
        "answer_fallbacks": True,
        "num_questions": 12,
        "models": [f"base={BUNDLED_MODEL}", f"lora={adapter_dir}"],
        "max_new_tokens": 32,
        "dtype": "float32",
        "plot": False,
    }
    through_vllm = run_evaluation(EvalConfig(**common, generation_backend="vllm", output_dir=str(tmp_path / "v")))
    reference = run_evaluation(EvalConfig(**common, generation_backend="transformers", output_dir=str(tmp_path / "t")))
    assert through_vllm["generation_backend"] == "vllm" and reference["generation_backend"] == "transformers"
    for label in ("base", "lora"):
        ours, theirs = _greedy_texts(through_vllm, label), _greedy_texts(reference, label)
        assert len(ours) == 12
        assert sum(a == b for a, b in zip(ours, theirs)) >= 11, f"{label}: vLLM and transformers disagree"
    # The adapter really was applied (merged) in vLLM: its answers are not the base model's.
    assert _greedy_texts(through_vllm, "lora") != _greedy_texts(through_vllm, "base")
    assert (tmp_path / "v" / "results.json").is_file()

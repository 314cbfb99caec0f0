"""The shared model loader (`ssb_trl.models`): a tokenizer whose eos is not its end of turn is refused, and the
bundled model's cache is keyed by what made it. Loading, generating and saving the bundled model is tested with the
engines (test_engines.py); model identity by content or revision with the run engine
(tests/jobs/test_identity_lock_workdir.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssb_trl.models import BUNDLED_MODEL, bundled_model_dir, load_model_and_tokenizer
from ssb_trl.prepare import prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from tests.helpers import GOLDS, make_digit_model, small_config, write_questions


def _run(config, **kwargs):
    return prepare_ssb_data(config, show_progress=False, **kwargs)


def test_a_tokenizer_whose_eos_is_not_the_end_of_turn_is_refused(tmp_path: Path, tokenizer) -> None:
    folder = tmp_path / "model"
    model = make_digit_model(tokenizer)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    tokenizer.eos_token = "<|im_start|>"  # what transformers 5.17 read from the bundled GGUF
    tokenizer.save_pretrained(folder)
    with pytest.raises(
        ValueError, match=r"ends an assistant turn with '<\|im_end\|>' \(id 2\), but its eos ids are \[1\]"
    ):
        load_model_and_tokenizer(str(folder), device="cpu")
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS[:3]), model_name_or_path=str(folder))
    with pytest.raises(ValueError, match=r"tokenizer\.eos_token = '<\|im_end\|>'"):
        _run(config)
    assert not PrepareJob.work_dir(config.output_dir).root.exists()
    from ssb_trl.models import end_of_turn_token

    assert end_of_turn_token(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_bundled_model_cache_is_keyed_by_what_made_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from ssb_trl.models import _bundled_cache_dir, _gguf_signature, bundled_gguf_path

    folder = bundled_model_dir()
    stamp = json.loads((folder / "ssb_trl_source.json").read_text())
    assert stamp["transformers"] == transformers.__version__ and folder == _bundled_cache_dir(stamp)
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    assert _bundled_cache_dir(_gguf_signature(bundled_gguf_path())) != folder  # another version: another copy
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu")
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id

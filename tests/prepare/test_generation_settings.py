"""What generation ran with (device, dtype, batch limits) is recorded where a user looks: the run summary."""

from __future__ import annotations

import re
from pathlib import Path

from ssb_trl.prepare import prepare_ssb_data
from tests.helpers import GOLDS, make_digit_model, small_config, write_questions


def test_preparation_summary_records_the_generation_settings(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS))
    summary = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert summary.generation_settings == {
        "backend": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "max_batch_size": 64,  # the CPU default (on CUDA: "auto (free GPU memory, up to 1024)")
        "max_batch_tokens": None,
        "shard_size": config.shard_size,
    }
    assert re.search(
        r"generation settings \(this run\) +backend transformers, device cpu, dtype float32", summary.table()
    )
    # A rerun that generates nothing says so instead of repeating settings it did not use.
    assert prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False).generation_settings == {}

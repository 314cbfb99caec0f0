"""The README's Python snippet runs as written (CPU, offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_soft_label_dataset, make_tiny_model

from ssb_trl import save_soft_label_dataset
from ssb_trl.models import BUNDLED_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"


def _use_it_snippet() -> str:
    section = README.read_text().split("## Use it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tmp_path: Path, tokenizer) -> None:
    # Soft labels from a tiny model with SmolLM2's vocabulary, recorded as the bundled model's (its tokenizer).
    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=4, top_k=8)
    metadata.teacher_model = BUNDLED_MODEL
    dataset.info.description = metadata.to_description()
    save_soft_label_dataset(dataset, str(tmp_path / "outputs/demo/data"), metadata)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", _use_it_snippet()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "smollm2-ssb" / "checkpoint-4").is_dir()

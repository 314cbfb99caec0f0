"""Grading one answer, `import ssb_trl` and `ssb-trl --help` do not import the training stack (torch,
transformers, datasets, TRL, accelerate): the package namespaces load their names on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "datasets", "trl", "accelerate")
ROOT = Path(__file__).resolve().parents[2]


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import ssb_trl.tasks.grading as grading\nassert grading.extract_final_answer('so the answer is 4') == '4'",
        "import ssb_trl",
        "import ssb_trl.prepare, ssb_trl.label, ssb_trl.eval, ssb_trl.stats, ssb_trl.soft_labels, ssb_trl.tasks",
        "import sys\nsys.argv = ['ssb-trl', '--help']\nfrom ssb_trl.cli import main\ntry:\n    main()\n"
        "except SystemExit:\n    pass",
    ],
)
def test_light_entry_points_do_not_import_the_training_stack(code: str) -> None:
    assert _heavy_modules_after(code) == []


def test_every_public_name_still_imports() -> None:
    import ssb_trl
    import ssb_trl.eval
    import ssb_trl.generation
    import ssb_trl.label
    import ssb_trl.prepare
    import ssb_trl.soft_labels
    import ssb_trl.tasks

    packages = (ssb_trl, ssb_trl.prepare, ssb_trl.label, ssb_trl.eval, ssb_trl.soft_labels, ssb_trl.tasks)
    for package in (*packages, ssb_trl.generation):
        assert package.__all__ == sorted(package._EXPORTS)
        for name in package.__all__:
            assert getattr(package, name).__name__ == name
            assert name in dir(package)
    from ssb_trl import SSBTrainer
    from ssb_trl.trainer import SSBTrainer as defined

    assert SSBTrainer is defined
    assert (
        ssb_trl.soft_labels.schema.SoftLabelMetadata is ssb_trl.SoftLabelMetadata
    )  # submodules by attribute, as before
    with pytest.raises(AttributeError, match="no attribute 'SSBTrainr'"):
        ssb_trl.SSBTrainr  # noqa: B018


def test_using_a_name_imports_what_it_needs() -> None:
    assert {"torch", "transformers", "trl"} <= set(_heavy_modules_after("import ssb_trl\nssb_trl.SSBConfig"))

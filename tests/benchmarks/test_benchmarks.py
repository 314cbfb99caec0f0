"""The benchmark scripts run (tiny shapes, CPU), so their code cannot rot between GPU sessions."""

import subprocess
import sys
from pathlib import Path

import pytest

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    output = tmp_path / "gpu_check_tiny.md"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--tiny", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    for method in ("| sft |", "| ssb |", "| dense |"):
        assert method in text
    assert "answer tokens/s" in text and "new tokens/s" in text
    assert "deepspeed_zero3.yaml, 2 SSB steps\n\npassed" in text
    # The whole path on the bundled model: preparation stages, both trainings, evaluation, each timed.
    assert "### End to end, bundled SmolLM2-135M" in text and "| FAILED |" not in text
    for stage in (
        "| prep: rollouts |",
        "| prep: teacher answers |",
        "| train SSB |",
        "| train SFT |",
        "| **whole path** |",
    ):
        assert stage in text


def test_train_step_table_ratios():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_step

    rows = [
        {"method": "sft", "shape": "s", "batch": "b", "s_per_step": 2.0, "peak_gib": 10.0},
        {"method": "ssb", "shape": "s", "batch": "b", "s_per_step": 2.1, "peak_gib": 10.5},
    ]
    table = train_step.table(rows)
    assert "| ssb | 2.100 | 10.50 | 1.050 | 1.050 |" in table


def test_import_benchmark_runs(tmp_path) -> None:
    output = tmp_path / "bench_import.md"
    bench = ROOT / "benchmarks/bench_import.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--repeats", "1", "--output", str(output)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = output.read_text()
    assert "| `import ssb_trl.tasks.grading` |" in text and "| `ssb-trl --help` |" in text
    assert "- this checkout: none" in text

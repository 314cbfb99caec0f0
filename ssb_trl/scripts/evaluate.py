"""Evaluate base, trained and adapter models side by side: pass@1 (greedy), mean@n / pass@n (sampled), length.

Writes `results.json` (with per-question records), `results.md` (table) and `accuracy.png` (bars with 95%
intervals; not with `--no_plot`) to `--output_dir`, and prints the table. Each finished model is also saved to
`--output_dir/models/<label>.json`: rerun the same command after a crash, or with more `--models`, and finished
models are reused (only the others are evaluated); results computed with other settings are refused unless
`--overwrite`. Every field of `ssb_trl.eval.EvalConfig` (the question source fields shared with `ssb-trl prepare`,
then the models and the decoding) is a flag and a YAML key.

    # offline: bundled SmolLM2 vs a trained adapter on held-out reasoning-gym questions
    ssb-trl evaluate --models base=bundled:smollm2-135m-instruct ssb=out/ssb \\
        --dataset_name reasoning_gym:basic_arithmetic --source_seed 999 --num_questions 50
    # GPU users, online: MATH-500 pass@1 plus mean@4
    ssb-trl evaluate --models Qwen/Qwen2.5-3B-Instruct out/qwen-ssb --dataset_name math500 \\
        --num_samples 4 --max_new_tokens 4096 --batch_size 64
"""

from __future__ import annotations

import sys

from trl import TrlParser

from ssb_trl.eval import EvalConfig, render_markdown, run_evaluation
from ssb_trl.scripts.common import configure_logging, run_script
from ssb_trl.tasks.sources import BENCHMARK_PRESETS

_SOURCE_FORMS = (
    f"a benchmark preset ({', '.join(BENCHMARK_PRESETS)}), a Hub dataset id, 'reasoning_gym:<task>', or a local "
    ".jsonl/.json/.parquet/.csv file or dataset folder (the route that works offline)"
)
RENAMED_FLAGS = {  # 0.1 flag -> what to write now (docs/CHANGES.md, "Renamed in 0.2")
    "--benchmark": f"--dataset_name: {_SOURCE_FORMS}",
    "--rg_task": "--dataset_name reasoning_gym:<task>",
    "--rg_config": "--task_config",
    "--rg_seed": "--source_seed",
    "--rg_size": "--num_questions",
    "--temperature": "--sampling_temperature (the sampling temperature of mean@n)",
    "--top_k": "--sampling_top_k",
    "--top_p": "--sampling_top_p",
}


class EvalParser(TrlParser):
    """TrlParser that names the new flag when a user types one renamed in 0.2 (e.g. ``--benchmark``)."""

    def parse_args_and_config(self, args=None, *rest, **kwargs):
        argv = list(sys.argv[1:] if args is None else args)
        used = [arg.split("=", 1)[0] for arg in argv if arg.split("=", 1)[0] in RENAMED_FLAGS]
        if used:
            self.error(
                "renamed flag(s): "
                + "; ".join(f"{flag} is now {RENAMED_FLAGS[flag]}" for flag in dict.fromkeys(used))
                + " (see docs/CHANGES.md, 'Renamed in 0.2')"
            )
        return super().parse_args_and_config(args, *rest, **kwargs)


def main(eval_config: EvalConfig) -> dict:
    """Run the evaluation and print its table; return the report (what results.json holds)."""
    report = run_evaluation(eval_config)
    print(render_markdown(report))
    reused = [m["label"] for m in report["models"] if m.get("reused")]
    written = ["results.json", "results.md", *(["accuracy.png"] if eval_config.plot else []), "models/"]
    print(f"Results written to {eval_config.output_dir}/ ({', '.join(written)})")
    if reused:
        print(f"Reused from an earlier run with the same settings: {', '.join(reused)}")
    return report


def make_parser(prog: str | None = None) -> TrlParser:
    return EvalParser((EvalConfig,), prog=prog)


if __name__ == "__main__":
    configure_logging()
    run_script(main, make_parser())

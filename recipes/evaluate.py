"""Evaluate base, trained and adapter models side by side: pass@1 (greedy), mean@n / pass@n (sampled), answer length.

Writes `results.json` (with per-question records), `results.md` (table) and `accuracy.png` (bars with 95% CIs)
to `--output_dir`, and prints the table.

Examples:

    # embedded default, offline: bundled SmolLM2 vs a trained adapter on held-out reasoning-gym questions
    python recipes/evaluate.py --models base=bundled:smollm2-135m-instruct ssb=out/ssb \\
        --benchmark reasoning_gym --rg_task basic_arithmetic --rg_seed 999 --rg_size 50

    # GPU users, online: MATH-500 pass@1 plus mean@4
    python recipes/evaluate.py --models Qwen/Qwen2.5-3B-Instruct out/qwen-ssb --benchmark math500 \\
        --num_samples 4 --max_new_tokens 4096 --batch_size 64

    # from a YAML file (keys = EvalConfig fields); CLI flags override it
    python recipes/evaluate.py --config recipes/configs/eval.yaml --limit 20
"""

from __future__ import annotations

import logging
import sys

from trl import TrlParser

from ssb_trl.evaluation import EvalConfig, render_markdown, run_evaluation


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments (YAML via --config, CLI overrides), run the evaluation, print the table; return the report."""
    parser = TrlParser((EvalConfig,))
    (config,) = parser.parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_evaluation(config)
    print(render_markdown(report))
    print(f"Results written to {config.output_dir}/ (results.json, results.md, accuracy.png)")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

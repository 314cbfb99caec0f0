"""Evaluate base, trained and adapter models side by side: pass@1 (greedy), mean@n / pass@n (sampled), length.

Writes `results.json` (with per-question records), `results.md` (table) and `accuracy.png` (bars with 95%
intervals) to `--output_dir`, and prints the table. Every field of `ssb_trl.eval.EvalConfig` (the question
source fields shared with `ssb-trl prepare`, then the models and the decoding) is a flag and a YAML key.

    # offline: bundled SmolLM2 vs a trained adapter on held-out reasoning-gym questions
    ssb-trl evaluate --models base=bundled:smollm2-135m-instruct ssb=out/ssb \\
        --source reasoning_gym:basic_arithmetic --source_seed 999 --num_questions 50
    # GPU users, online: MATH-500 pass@1 plus mean@4
    ssb-trl evaluate --models Qwen/Qwen2.5-3B-Instruct out/qwen-ssb --source math500 \\
        --num_samples 4 --max_new_tokens 4096 --batch_size 64
"""

from __future__ import annotations

from trl import TrlParser

from ssb_trl.eval import EvalConfig, render_markdown, run_evaluation
from ssb_trl.scripts import configure_logging


def main(eval_config: EvalConfig) -> dict:
    """Run the evaluation and print its table; return the report (what results.json holds)."""
    report = run_evaluation(eval_config)
    print(render_markdown(report))
    print(f"Results written to {eval_config.output_dir}/ (results.json, results.md, accuracy.png)")
    return report


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((EvalConfig,), prog=prog)


if __name__ == "__main__":
    configure_logging()
    (config,) = make_parser().parse_args_and_config()
    main(config)

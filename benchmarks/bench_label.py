"""Labelling throughput of `ssb-trl label`: completion tokens labelled per second by the bundled teacher.

The whole labelling call (`ssb_trl.label.job.label_dataset`, model already loaded): reading and tokenizing the
rows, the teacher-forced pass, the shard files and the published dataset. Rows are the demo task's questions
(benchmarks/data) with written-out step-by-step completions of about --completion_tokens tokens each.
`--generate N` also times N prompts-only rows, the teacher writing their completions (greedy).

    python benchmarks/bench_label.py --rows 32 --completion_tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _ssb_bench_data import load_bundled, machine, write_results

from ssb_trl.label.config import LabelConfig
from ssb_trl.label.job import label_dataset
from ssb_trl.models import BUNDLED_MODEL

QUESTIONS = Path(__file__).resolve().parent / "data" / "demo_task_1024.jsonl"


def completion(question: str, answer: str, tokenizer, target_tokens: int) -> str:
    """A worked answer of about `target_tokens` tokens: restated steps, then the boxed result."""
    steps = [f"We are asked: {question}", "Let us work it out one step at a time."]
    step = 1
    while len(tokenizer("\n".join(steps))["input_ids"]) < target_tokens - 12:
        steps.append(f"Step {step}: we check the signs and the digits again, and the result stays {answer}.")
        step += 1
    return "\n".join([*steps, f"So the final answer is \\boxed{{{answer}}}."])


def rows(n: int, tokenizer, target_tokens: int, with_completions: bool) -> list[dict]:
    lines = QUESTIONS.read_text().splitlines()[:n]
    out = []
    for line in lines:
        record = json.loads(line)
        row = {"id": record["id"], "prompt": [{"role": "user", "content": record["question"]}]}
        if with_completions:
            text = completion(record["question"], record["answer"], tokenizer, target_tokens)
            row["completion"] = [{"role": "assistant", "content": text}]
        out.append(row)
    return out


def run(model, tokenizer, data: list[dict], folder: Path, **settings) -> tuple[float, float, object]:
    """Wall and CPU seconds (all threads) of one labelling call, and its summary."""
    folder.mkdir(parents=True)
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    config = LabelConfig(
        dataset_name=str(path), teacher_model_name_or_path=BUNDLED_MODEL, output_dir=str(folder / "out"), **settings
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = label_dataset(config, model=model, tokenizer=tokenizer, show_progress=False)
    return time.perf_counter() - start, time.process_time() - cpu_start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--completion_tokens", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--logprob_dtype", default="uint8")
    parser.add_argument("--batch_size", type=int, default=8, help="soft_label_batch_size")
    parser.add_argument("--generate", type=int, default=0, help="also time N prompts-only rows (teacher writes)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args()
    model, tokenizer = load_bundled()
    settings = dict(
        soft_label_top_k=args.top_k, logprob_dtype=args.logprob_dtype, soft_label_batch_size=args.batch_size
    )
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        data = rows(args.rows, tokenizer, args.completion_tokens, with_completions=True)
        seconds, cpu, summary = run(model, tokenizer, data, Path(tmp) / "given", **settings)
        lines.append(
            f"| dataset completions | {summary.rows_written} | {summary.answer_tokens} | {seconds:.1f} | {cpu:.1f} | "
            f"{summary.answer_tokens / seconds:.0f} | {summary.answer_tokens / cpu:.0f} | "
            f"{summary.bytes_per_answer_token:.0f} |"
        )
        if args.generate:
            data = rows(args.generate, tokenizer, 0, with_completions=False)
            seconds, cpu, summary = run(
                model, tokenizer, data, Path(tmp) / "generated", teacher_max_new_tokens=args.max_new_tokens, **settings
            )
            lines.append(
                f"| teacher writes (greedy, max_new_tokens={args.max_new_tokens}) | {summary.rows_written} of "
                f"{summary.rows_in} | {summary.answer_tokens} | {seconds:.1f} | {cpu:.1f} | "
                f"{summary.answer_tokens / seconds:.1f} | {summary.answer_tokens / cpu:.1f} | "
                f"{summary.bytes_per_answer_token:.0f} |"
            )
    command = "python benchmarks/bench_label.py " + " ".join(
        f"--{name} {value}" for name, value in vars(args).items() if value != parser.get_default(name)
    )
    markdown = "\n".join(
        [
            "# Labelling throughput: `ssb-trl label` with the bundled teacher",
            "",
            f"Teacher SmolLM2-135M-Instruct (float32, CPU), K = {args.top_k}, T = 2, logprob_dtype {args.logprob_dtype}, "
            f"soft_label_batch_size {args.batch_size}; the whole `label_dataset` call with the model loaded (tokenizing, "
            f"teacher-forced pass, shard files, published dataset). Machine: {machine()}.",
            "",
            "| completions | rows | completion tokens | wall s | CPU s | completion tokens/s (wall) | per CPU second "
            "| bytes per completion token (Arrow) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *lines,
            "",
            f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. On a shared machine the "
            "wall-clock rate is what this process got; the rate per CPU second (all its threads) is what the work costs.",
            "",
            f"Command: `nice -n 19 {command.strip()}`",
        ]
    )
    write_results("bench_label", markdown)


if __name__ == "__main__":
    main()

"""Labelling throughput of `ssb-trl label`: completion tokens labelled per second by the bundled teacher.

The whole labelling call (`ssb_trl.label.job.label_dataset`, model or engine already started): reading and
tokenizing the rows, the soft labels, the shard files and the published dataset. Rows are the demo task's questions
(benchmarks/data) with written-out step-by-step completions of about --completion_tokens tokens each.
`--generate N` also times N prompts-only rows, the teacher writing their completions (greedy).
`--soft_label_backends transformers,vllm` times the same rows with each engine computing the soft labels (the
teacher-forced transformers pass, and a local vLLM engine's prompt log-probs, in-process, float32 both); vLLM needs
the vLLM virtualenv:

    python benchmarks/bench_label.py --rows 32 --completion_tokens 128
    .venv-vllm/bin/python benchmarks/bench_label.py --soft_label_backends transformers,vllm
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


def run(model, tokenizer, data: list[dict], folder: Path, backend=None, **settings) -> tuple[float, float, object]:
    """Wall and CPU seconds (all threads of this process: vLLM runs in it) of one labelling call, and its summary."""
    folder.mkdir(parents=True)
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    config = LabelConfig(
        dataset_name=str(path), teacher_model_name_or_path=BUNDLED_MODEL, output_dir=str(folder / "out"), **settings
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = label_dataset(config, model=model, tokenizer=tokenizer, backend=backend, show_progress=False)
    return time.perf_counter() - start, time.process_time() - cpu_start, summary


def start_vllm(tokenizer, memory: float) -> tuple[object, float]:
    """A local vLLM engine on the bundled model (float32, as the transformers teacher here), and its start time."""
    from ssb_trl.generation.engine import EngineConfig, make_backend

    started = time.perf_counter()
    config = EngineConfig(generation_backend="vllm", vllm_gpu_memory_utilization=memory)
    backend = make_backend(config, tokenizer=tokenizer, model_name_or_path=BUNDLED_MODEL, dtype="float32")
    return backend, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--completion_tokens", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--logprob_dtype", default="uint8")
    parser.add_argument("--batch_size", type=int, default=8, help="soft_label_batch_size (transformers)")
    parser.add_argument("--generate", type=int, default=0, help="also time N prompts-only rows (teacher writes)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--soft_label_backends", default="transformers", help="comma-separated: transformers,vllm")
    parser.add_argument("--vllm_memory", type=float, default=0.25, help="vllm_gpu_memory_utilization (CPU: its cache)")
    args = parser.parse_args()
    engines = args.soft_label_backends.split(",")
    model, tokenizer = load_bundled()
    settings = dict(
        soft_label_top_k=args.top_k, logprob_dtype=args.logprob_dtype, soft_label_batch_size=args.batch_size,
        dtype="float32",
    )  # fmt: skip
    lines, rates, notes = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            backend, own = None, {"soft_label_backend": engine}
            if engine == "vllm":
                backend, start = start_vllm(tokenizer, args.vllm_memory)
                own["generation_backend"] = "vllm"
                notes.append(f"The vLLM engine started in {start:.0f} s (not counted above).")
            teacher = None if engine == "vllm" else model  # vLLM scores alone: no transformers teacher loaded
            data = rows(args.rows, tokenizer, args.completion_tokens, with_completions=True)
            seconds, cpu, summary = run(
                teacher, tokenizer, data, Path(tmp) / engine / "given", backend, **settings, **own
            )
            rates[engine] = (summary.answer_tokens / seconds, summary.answer_tokens / cpu)
            lines.append(
                f"| {engine} | dataset completions | {summary.rows_written} | {summary.answer_tokens} | {seconds:.1f} | "
                f"{cpu:.1f} | {rates[engine][0]:.0f} | {rates[engine][1]:.0f} | {summary.bytes_per_answer_token:.0f} |"
            )
            if args.generate:
                data = rows(args.generate, tokenizer, 0, with_completions=False)
                seconds, cpu, summary = run(
                    teacher, tokenizer, data, Path(tmp) / engine / "generated", backend,
                    teacher_max_new_tokens=args.max_new_tokens, **settings, **own,
                )  # fmt: skip
                lines.append(
                    f"| {engine} | teacher writes (greedy, max_new_tokens={args.max_new_tokens}) | "
                    f"{summary.rows_written} of {summary.rows_in} | {summary.answer_tokens} | {seconds:.1f} | {cpu:.1f} | "
                    f"{summary.answer_tokens / seconds:.1f} | {summary.answer_tokens / cpu:.1f} | "
                    f"{summary.bytes_per_answer_token:.0f} |"
                )
            if backend is not None:
                backend.close()
    if "transformers" in rates and "vllm" in rates:
        wall, per_cpu = (rates["vllm"][i] / rates["transformers"][i] for i in (0, 1))
        notes.insert(0, f"vLLM / transformers, same rows: {wall:.2f}x completion tokens per wall second, "
                        f"{per_cpu:.2f}x per CPU second.")  # fmt: skip
    python = ".venv-vllm/bin/python" if "vllm" in engines else "python"
    command = f"{python} benchmarks/bench_label.py " + " ".join(
        f"--{name} {value}" for name, value in vars(args).items() if value != parser.get_default(name)
    )
    markdown = "\n".join(
        [
            "# Labelling throughput: `ssb-trl label` with the bundled teacher",
            "",
            f"Teacher SmolLM2-135M-Instruct (float32, CPU), K = {args.top_k}, T = 2, logprob_dtype {args.logprob_dtype}, "
            f"soft_label_batch_size {args.batch_size} (transformers); the whole `label_dataset` call with the model or "
            "engine started (tokenizing, soft labels, shard files, published dataset); engine: `--soft_label_backend`. "
            f"Machine: {machine()}.",
            "",
            "| engine | completions | rows | completion tokens | wall s | CPU s | completion tokens/s (wall) | per CPU "
            "second | bytes per completion token (Arrow) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *lines,
            "",
            *notes,
            "" if notes else "",
            f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. On a shared machine the "
            "wall-clock rate is what this process got; the rate per CPU second (all its threads) is what the work costs.",
            "",
            f"Command: `nice -n 19 {command.strip()}`",
        ]
    )
    write_results("bench_label", markdown)


if __name__ == "__main__":
    main()

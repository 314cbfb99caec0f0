"""Generation engines side by side, in one run: the transformers backend vs a local vLLM engine.

Same model (bundled SmolLM2-135M-Instruct), same prompts (one-digit reasoning-gym questions, the demo's), same
sampling (temperature 0.8, top-k 50), same machine, one after the other in this process. "Start" is what a run
pays before its first token: loading the model (transformers) or starting the engine (vLLM, eager on CPU).
Needs vLLM (`make bench-vllm` runs it in the vLLM virtualenv).

    python benchmarks/bench_backends.py --questions 32 --samples 4 --max_new_tokens 128
"""

from __future__ import annotations

import argparse
import time

from _ssb_bench_data import machine, questions, write_results

from ssb_trl.generation.engine import EngineConfig, make_backend
from ssb_trl.generation.sampling import Sampling
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer, load_tokenizer
from ssb_trl.tasks.prompts import student_messages


def measure(kind: str, dtype: str, prompts, sampling: Sampling, seed: int) -> dict:
    started = time.perf_counter()
    config = EngineConfig(generation_backend=kind)
    if kind == "transformers":
        model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu", dtype=dtype)
        backend = make_backend(config, model=model, tokenizer=tokenizer, show_progress=False)
    else:
        tokenizer = load_tokenizer(BUNDLED_MODEL)
        backend = make_backend(
            config, tokenizer=tokenizer, model_name_or_path=BUNDLED_MODEL, dtype=dtype, show_progress=False
        )
    start_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = backend.generate(prompts, sampling, seed=seed)
    seconds = time.perf_counter() - started
    backend.close()
    new_tokens = sum(len(c.token_ids) for per_prompt in result for c in per_prompt)
    return {"backend": kind, "dtype": dtype, "start": start_seconds, "tokens": new_tokens, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prompts = [student_messages(q.question) for q in questions(args.questions, args.seed)]
    sampling = Sampling(temperature=0.8, top_k=50, max_new_tokens=args.max_new_tokens, n=args.samples)
    runs = [
        measure(kind, dtype, prompts, sampling, args.seed)
        for kind, dtype in (
            ("transformers", "float32"),
            ("transformers", "bfloat16"),
            ("vllm", "float32"),
            ("vllm", "bfloat16"),
        )
    ]
    baseline = runs[0]["tokens"] / runs[0]["seconds"]
    lines = [
        "# Generation engines: transformers backend vs local vLLM",
        "",
        f"Model: bundled SmolLM2-135M-Instruct. {args.questions} one-digit reasoning-gym questions x {args.samples} "
        f"samples, temperature 0.8, top-k 50, max {args.max_new_tokens} new tokens, one run each, in this order, in "
        f"one process. Machine: {machine()}.",
        "",
        "| backend | dtype | start (s) | new tokens | seconds | new tokens/s | vs transformers float32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        rate = run["tokens"] / run["seconds"]
        lines.append(
            f"| {run['backend']} | {run['dtype']} | {run['start']:.1f} | {run['tokens']} | {run['seconds']:.1f} | "
            f"{rate:.0f} | {rate / baseline:.2f}x |"
        )
    lines += [
        "",
        "vLLM on CPU runs eagerly (`vllm_enforce_eager` defaults to true there: compiling took ~90 s and decoded no "
        "faster) with one global seed reset per call.",
        "",
        "Command: `make bench-vllm` (= `python benchmarks/bench_backends.py "
        f"--questions {args.questions} --samples {args.samples} --max_new_tokens {args.max_new_tokens}` in the vLLM "
        "virtualenv).",
    ]
    write_results("bench_backends", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

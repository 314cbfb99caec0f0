"""Rollout throughput: the default batched backend vs a batch-1 `generate` loop (the reference's way).

Same model (bundled SmolLM2-135M-Instruct), same prompts, same sampling (temperature 0.8, top-k 50),
same machine. Counts only real new tokens (up to and including end of turn), not padding.

    python benchmarks/bench_rollouts.py --questions 8 --samples 4 --max_new_tokens 128
"""

from __future__ import annotations

import argparse
import time

import torch
from _ssb_bench_data import load_bundled, machine, questions, write_results

from ssb_trl.generation.sampling import Sampling
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages


def batch_one_loop(model, tokenizer, prompts, samples: int, max_new_tokens: int, seed: int) -> tuple[int, float]:
    """One sequence per `generate` call, as the reference code does."""
    torch.manual_seed(seed)
    new_tokens, started = 0, time.perf_counter()
    eos = tokenizer.eos_token_id
    for messages in prompts:
        ids = torch.tensor([chat_prompt_ids(tokenizer, messages)])
        for _ in range(samples):
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=0.8,
                top_k=50,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            generated = out[0, ids.shape[1] :].tolist()
            new_tokens += generated.index(eos) + 1 if eos in generated else len(generated)
    return new_tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_bundled()
    prompts = [student_messages(q.question) for q in questions(args.questions, args.seed)]
    backend = TransformersBackend(model, tokenizer)
    sampling = Sampling(temperature=0.8, top_k=50, max_new_tokens=args.max_new_tokens, n=args.samples)
    backend.generate(prompts[:1], Sampling(temperature=0.8, top_k=50, max_new_tokens=4))  # warm-up
    started = time.perf_counter()
    result = backend.generate(prompts, sampling, seed=args.seed)
    batched_seconds = time.perf_counter() - started
    batched_tokens = sum(len(c.token_ids) for per_prompt in result for c in per_prompt)
    loop_tokens, loop_seconds = batch_one_loop(model, tokenizer, prompts, args.samples, args.max_new_tokens, args.seed)

    batched_rate, loop_rate = batched_tokens / batched_seconds, loop_tokens / loop_seconds
    sequences = args.questions * args.samples
    table = [
        "# Rollout throughput: batched backend vs batch-1 loop",
        "",
        f"Model: bundled SmolLM2-135M-Instruct (float32). {sequences} rollouts ({args.questions} one-digit "
        f"reasoning-gym questions x {args.samples} samples), temperature 0.8, top-k 50, max {args.max_new_tokens} "
        f"new tokens. Machine: {machine()}.",
        "",
        "| backend | sequences | new tokens | seconds | new tokens/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| TransformersBackend (batched, max_batch_size={backend.auto_batch_size(1)}) | {sequences} | "
        f"{batched_tokens} | {batched_seconds:.1f} | {batched_rate:.1f} |",
        f"| batch-1 `generate` loop (reference) | {sequences} | {loop_tokens} | {loop_seconds:.1f} | {loop_rate:.1f} |",
        "",
        f"Speed-up: **{batched_rate / loop_rate:.1f}x** new tokens/s.",
        "",
        "Command: `python benchmarks/bench_rollouts.py "
        f"--questions {args.questions} --samples {args.samples} --max_new_tokens {args.max_new_tokens}`",
    ]
    write_results("bench_rollouts", "\n".join(table) + "\n")


if __name__ == "__main__":
    main()

"""One decoding step on a long context: transformers' DynamicCache (grown by ``torch.cat``) vs the backend's cache
written in place (:mod:`ssb_trl.generation.kv_cache`), on the bundled model, the same batch, alternating.

Why: bench_teacher times whole teacher stages, where the decode step's cache copy is one part among weight
matmuls and attention, and rows leave the batch as they finish; this isolates the step. Rows continue two
prompts of ``--context`` tokens (one left-padded by 100), as after a shared prefill.

    python benchmarks/bench_kv_cache_step.py --context 500 --rows 16,32
"""

from __future__ import annotations

import argparse
import time

import torch
from _ssb_bench_data import load_bundled, machine, write_results
from transformers import DynamicCache

from ssb_trl.generation.kv_cache import reserved_cache


def seconds_per_step(model, make_cache, rows: int, context: int, steps: int) -> float:
    prompt = torch.randint(100, 1000, (2, context))
    attention = torch.ones(2, context, dtype=torch.long)
    attention[1, :100] = 0
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = make_cache()
    model(input_ids=prompt, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True)
    rows_prompt = torch.arange(rows) % 2
    cache.batch_select_indices(rows_prompt)
    attention, next_positions = attention[rows_prompt], positions[rows_prompt][:, -1:] + 1
    tokens = torch.randint(100, 1000, (rows, 1))
    started = time.perf_counter()
    for step in range(steps):
        attention = torch.cat([attention, attention.new_ones(rows, 1)], -1)
        model(input_ids=tokens, attention_mask=attention, position_ids=next_positions + step, cache=cache)
    return (time.perf_counter() - started) / steps


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=500)
    parser.add_argument("--rows", default="16,32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, _ = load_bundled()
    caches = {
        "DynamicCache (torch.cat)": lambda: DynamicCache(config=model.config),
        "in place (ReservedLayer)": lambda: reserved_cache(model.config, args.context + 256),
    }
    lines = [
        "# One decoding step: DynamicCache vs the cache written in place",
        "",
        f"Bundled SmolLM2-135M-Instruct (float32), context {args.context} tokens, {args.steps} steps, best of "
        f"{args.repeats} alternating runs. Machine: {machine()}.",
        "",
        "| rows | " + " | ".join(f"{name} s/step" for name in caches) + " | speed-up |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for rows in [int(r) for r in args.rows.split(",")]:
        best = {name: float("inf") for name in caches}
        for _ in range(args.repeats):
            for name, make in caches.items():
                best[name] = min(best[name], seconds_per_step(model, make, rows, args.context, args.steps))
        old, new = best.values()
        lines.append(f"| {rows} | {old:.3f} | {new:.3f} | {old / new:.2f}x |")
    lines += ["", f"Command: `python benchmarks/bench_kv_cache_step.py --context {args.context} --rows {args.rows}`"]
    write_results("bench_kv_cache_step", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

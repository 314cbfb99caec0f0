"""Rollouts vs hinted teacher answers, three ways of decoding, in one run on one machine.

Why this exists: on an H200 and on the CPU, teacher answers ran several times slower per token than
rollouts. Teacher prompts are long (the hinted prompt holds two full student attempts) and their answers
longer, and ``model.generate`` keeps computing every row of a batch until its longest row stops, so one
answer that runs to ``max_new_tokens`` made the whole batch pay for it (on long contexts). The backend's
own loop fixed that (finished rows leave the batch); it then still prefilled each prompt once per sample
and copied the whole KV cache at every step (``DynamicCache`` grows by ``torch.cat``), which on ~700-token
teacher prompts was most of the time; now each distinct prompt of a batch is prefilled once and the cache
is written in place (:mod:`ssb_trl.generation.kv_cache`).

The demo's data (recipes/configs/demo_data.yaml: bundled SmolLM2-135M-Instruct, one-digit reasoning-gym
arithmetic, seed 42): rollouts (4 per question, T=0.8, top-k 50, max 192 new tokens), then teacher prompts
built from those rollouts as the pipeline builds them (the chosen correct/incorrect pair; for a question
without one, its first two attempts, so every question gives a hinted prompt of the real shape), answered
4 times at T=0.4, top-k 50, max 256 new tokens. Each stage runs, shard by shard (the demo's shard size),
with three decoders on the same batches, back to back, so load changes hit all three alike:

* ``own loop (before)`` (``--decoders before``): the backend's own loop as it was up to the shared
  prefill and the in-place cache: every row prefilled, ``DynamicCache`` (the same samples);
* ``own loop (now)``: :class:`~ssb_trl.generation.base.TransformersBackend` (finished rows leave the batch,
  each prompt prefilled once per batch, KV cache written in place);
* ``plain generate``: the same batches through ``model.generate(do_sample=True, ...)`` (transformers' own
  sampler), the reference a user would compare with;
* ``generate + seeded sampler`` (``--decoders generate``, not run by default): the backend before its own
  loop: ``model.generate`` with the seeded sampler (the same samples, rows kept to the end of the batch).

Reported per stage and decoder: new tokens/s (wall and per CPU-second: the machine is shared, the load is
printed), prompt padding share, prefill vs decode seconds, rows cut at the limit, and the share of decoded
row-steps that produced a kept token (the rest is compute spent on rows that had already finished), and
for each seeded decoder how many completions equal the own loop's (now): the same seeds give the same
samples unless batch-shape-dependent float rounding flips a token.

    python benchmarks/bench_teacher.py --questions 8 --shard_size 8
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict

import torch
from _ssb_bench_data import load_bundled, machine, questions, write_results
from seeded_sampler import SeededSampler
from transformers import DynamicCache

from ssb_trl.generation.base import GenerationStats
from ssb_trl.generation.sampling import Sampling, derive_seed
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.prepare.stages import choose_pair
from ssb_trl.tasks.grading import extract_final_answer, grade
from ssb_trl.tasks.prompts import load_hint_format, student_messages

ROLLOUT = Sampling(temperature=0.8, top_k=50, max_new_tokens=192, n=4)
TEACHER = Sampling(temperature=0.4, top_k=50, max_new_tokens=256, n=4)
SEED = 42


class GenerateDecoding(TransformersBackend):
    """The backend's batching, each batch decoded by one ``model.generate`` call (rows stay to the end).

    ``seeded=True`` samples with :class:`SeededSampler` (what the backend did before its own loop: the same
    samples); ``seeded=False`` uses transformers' own sampler (``do_sample=True``), seeded once per batch.
    """

    def __init__(self, model, tokenizer, seeded: bool):
        super().__init__(model, tokenizer, show_progress=False)
        self.seeded = seeded
        self.name = "generate + seeded sampler" if seeded else "plain generate"

    def _decode_batch(self, input_ids, attention, row_seeds, sampling, prompt_of_row):
        self.last_stats.prefill_tokens += int(attention[prompt_of_row].sum() - attention.sum())
        input_ids, attention = input_ids[prompt_of_row], attention[prompt_of_row]  # every row prefilled
        calls: list[float] = []
        started = [0.0]

        def before(*_):
            started[0] = time.perf_counter()

        def after(*_):
            calls.append(time.perf_counter() - started[0])

        hooks = [self.model.register_forward_pre_hook(before), self.model.register_forward_hook(after)]
        kwargs: dict = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if self.seeded and row_seeds is not None:
            kwargs["logits_processor"] = [
                SeededSampler(row_seeds, sampling.temperature, sampling.top_k, sampling.top_p)
            ]
            kwargs["do_sample"] = False
        elif row_seeds is not None:
            torch.manual_seed(row_seeds[0])
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k or None)
            kwargs["top_p"] = sampling.top_p
        else:
            kwargs["do_sample"] = False
        t0 = time.perf_counter()
        try:
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention, eos_token_id=self.eos_ids, **kwargs
            )
        finally:
            for hook in hooks:
                hook.remove()
        total = time.perf_counter() - t0
        self.last_stats.prefill_seconds += calls[0]
        self.last_stats.decode_seconds += total - calls[0]
        generated = output[:, input_ids.shape[1] :]
        self.last_stats.decode_row_steps += generated.shape[0] * generated.shape[1]
        return generated.tolist()


class PreviousOwnLoop(TransformersBackend):
    """The own loop before the shared prefill and the in-place KV cache: each row prefilled, cache by torch.cat."""

    name = "own loop (before)"

    def _new_cache(self, capacity: int) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def _decode_batch(self, input_ids, attention, row_seeds, sampling, prompt_of_row):
        rows = torch.tensor(prompt_of_row)
        self.last_stats.prefill_tokens += int(attention[rows].sum() - attention.sum())
        return super()._decode_batch(
            input_ids[rows], attention[rows], row_seeds, sampling, list(range(len(prompt_of_row)))
        )


def own_loop(model, tokenizer) -> TransformersBackend:
    backend = TransformersBackend(model, tokenizer, show_progress=False)
    backend.name = "own loop (now)"
    return backend


def teacher_prompts(qs, rollouts, hint: str) -> list:
    """Hinted prompts as the pipeline builds them (its pair), else from the question's first two attempts; the
    hint format's fields come from them and the question's verified answer."""
    hint_format = load_hint_format(hint)
    prompts = []
    for question, samples in zip(qs, rollouts):
        records = [
            {
                "answer": extract_final_answer(c.text, fallbacks=True),
                "correct": grade(c.text, question, fallbacks=True),
            }
            for c in samples
        ]
        pair = choose_pair(records, random.Random(derive_seed(SEED, question.id, "pair"))) or (0, 1)
        prompts.append(
            hint_format.messages(
                question.question,
                correct=samples[pair[0]].text,
                incorrect=samples[pair[1]].text,
                answer=question.answer,
            )
        )
    return prompts


def run_stage(decoders, prompts, seeds, sampling, shard_size, totals, cpu_seconds, stage: str):
    """Each shard through every decoder back to back; accumulates a GenerationStats and CPU seconds per decoder."""
    results = {}
    for start in range(0, len(prompts), shard_size):
        shard = slice(start, start + shard_size)
        for decoder in decoders:
            cpu = time.process_time()
            out = decoder.generate(prompts[shard], sampling, seed=seeds[shard])
            cpu = time.process_time() - cpu
            results.setdefault(decoder.name, []).extend(out)
            stats = decoder.last_stats
            totals[(stage, decoder.name)] = totals[(stage, decoder.name)].plus(stats)
            cpu_seconds[(stage, decoder.name)] += cpu
            print(f"[{stage} {start // shard_size}] {decoder.name}: {stats.describe()} | load {load()}", flush=True)
    return results


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--shard_size", type=int, default=8, help="questions per generate() call (the demo: 16)")
    parser.add_argument(
        "--decoders", default="before,now,plain", help="which of before,now,plain,generate to run (see above)"
    )
    parser.add_argument(
        "--teacher_hint", default="contrastive", help="hint format of the teacher prompts (the demo's: answer_only)"
    )
    parser.add_argument("--output", default="bench_teacher")
    args = parser.parse_args()

    load_before = load()
    model, tokenizer = load_bundled()
    choice = {
        "before": lambda: PreviousOwnLoop(model, tokenizer, show_progress=False),
        "now": lambda: own_loop(model, tokenizer),
        "plain": lambda: GenerateDecoding(model, tokenizer, seeded=False),
        "generate": lambda: GenerateDecoding(model, tokenizer, seeded=True),
    }
    decoders = [choice[name]() for name in args.decoders.split(",")]
    for decoder in decoders:  # warm-up
        decoder.generate([student_messages("1 + 1")], Sampling(temperature=0.8, top_k=50, max_new_tokens=4))
    qs = questions(args.questions, SEED)
    totals: dict = defaultdict(GenerationStats)
    cpu_seconds: dict = defaultdict(float)
    prompts = [student_messages(q.question) for q in qs]
    seeds = [derive_seed(SEED, q.id, "rollouts") for q in qs]
    outputs = {}
    rollouts = outputs["rollouts"] = run_stage(
        decoders, prompts, seeds, ROLLOUT, args.shard_size, totals, cpu_seconds, "rollouts"
    )
    # Teacher prompts from the backend's own rollouts (the first decoder's when "now" was not run).
    source = rollouts.get("own loop (now)") or next(iter(rollouts.values()))
    hinted = teacher_prompts(qs, source, args.teacher_hint)
    teacher_seeds = [derive_seed(SEED, q.id, "teacher", 0) for q in qs]
    outputs["teacher"] = run_stage(
        decoders, hinted, teacher_seeds, TEACHER, args.shard_size, totals, cpu_seconds, "teacher"
    )

    names = [d.name for d in decoders]
    lines = [
        "# Rollouts vs hinted teacher answers: several decoders on the same batches",
        "",
        f"Model: bundled SmolLM2-135M-Instruct ({totals[('rollouts', names[0])].dtype}), the demo's data: "
        f"{args.questions} questions in shards of {args.shard_size}; rollouts {ROLLOUT.n} x (T={ROLLOUT.temperature}, "
        f"top-k {ROLLOUT.top_k}, max {ROLLOUT.max_new_tokens}); teacher {TEACHER.n} x (T={TEACHER.temperature}, top-k "
        f"{TEACHER.top_k}, max {TEACHER.max_new_tokens}), hint `{args.teacher_hint}`. Machine: {machine()}; load average (1/5/15 min) "
        f"{load_before} before, {load()} after (a shared machine: compare decoders within this run, not across runs).",
        "",
        "| stage | decoder | rows | prompt tokens (mean) | padding | new tokens | cut at limit | kept / decoded "
        "row-steps | prefilled prompt tokens | prefill s | decode s | new tokens/s | per CPU-s | same as now |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage in ("rollouts", "teacher"):
        for name in names:
            t = totals[(stage, name)]
            now = outputs[stage].get("own loop (now)")
            same = ""
            if now is not None and name != "plain generate":
                pairs = [(a.token_ids, b.token_ids) for x, y in zip(outputs[stage][name], now) for a, b in zip(x, y)]
                same = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
            lines.append(
                f"| {stage} | {name} | {t.sequences} | {t.prompt_tokens / max(t.sequences, 1):.0f} | "
                f"{t.padding_share:.0%} | {t.new_tokens} | {t.hit_limit} | "
                f"{t.new_tokens / max(t.decode_row_steps, 1):.0%} | {t.prefill_tokens} | {t.prefill_seconds:.1f} | "
                f"{t.decode_seconds:.1f} | {t.tokens_per_second:.1f} | {t.new_tokens / cpu_seconds[(stage, name)]:.1f} | "
                f"{same} |"
            )
    lines += [
        "",
        "| decoder | teacher / rollout new tokens/s | the same, decoding only (no prefill) | rollouts vs plain generate "
        "| teacher vs plain generate |",
    ]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    plain = "plain generate" if "plain generate" in names else None
    for name in names:
        r, t = totals[("rollouts", name)], totals[("teacher", name)]
        vs = ["", ""]
        if plain:
            vs = [
                f"{r.tokens_per_second / totals[('rollouts', plain)].tokens_per_second:.2f}x",
                f"{t.tokens_per_second / totals[('teacher', plain)].tokens_per_second:.2f}x",
            ]
        decoding = (t.new_tokens / t.decode_seconds) / (r.new_tokens / r.decode_seconds)
        lines.append(
            f"| {name} | {t.tokens_per_second / r.tokens_per_second:.2f} | {decoding:.2f} | {vs[0]} | {vs[1]} |"
        )
    lines += [
        "",
        "Command: `python benchmarks/bench_teacher.py "
        f"--questions {args.questions} --shard_size {args.shard_size} --decoders {args.decoders} "
        f"--teacher_hint {args.teacher_hint}`",
    ]
    write_results(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

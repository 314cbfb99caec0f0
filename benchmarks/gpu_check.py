"""One-GPU check: SSB training step vs TRL SFT, soft-label extraction, rollout generation, ZeRO-3 smoke.

Run through `benchmarks/gpu_check.sh` (which installs the carried wheels on a GPU machine). Random
weights in Qwen2.5-3B's shape; nothing is downloaded. `--tiny` runs every part on the CPU with a small
shape in about a minute, so CI exercises this code.

Prints a markdown table per part and writes them to `--output` (default benchmarks/results/gpu_check.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402

PROFILES = {
    "gpu": dict(
        device="cuda",
        shape="qwen2.5-3b",
        train_batches=[(8, 256, 1792), (4, 256, 768)],
        dense_batches=[(4, 256, 768)],
        steps=3,
        extract=dict(n=64, prompt=256, answer=768, batch_size=16),
        generate=dict(prompts=512, prompt_len=200, new_tokens=256, batch1_new_tokens=32),
        smoke_shape="tiny",
        end_to_end=dict(questions=1024, eval_questions=300, shard_size=256, prep={}, train=[], eval=[]),
    ),
    "tiny": dict(
        device="cpu",
        shape="tiny",
        train_batches=[(2, 16, 48)],
        dense_batches=[(2, 16, 48)],
        steps=1,
        extract=dict(n=8, prompt=16, answer=32, batch_size=4),
        generate=dict(prompts=8, prompt_len=20, new_tokens=8, batch1_new_tokens=4),
        smoke_shape="tiny",
        # The bundled model on the CPU, few questions and short answers: the code path, not the figures.
        end_to_end=dict(
            questions=8,
            eval_questions=4,
            shard_size=8,
            prep=dict(rollout_max_new_tokens=64, teacher_max_new_tokens=64, hint_check_samples=1),
            train=["--max_steps", "2"],
            eval=["--max_new_tokens", "48"],
        ),
    ),
}


def chat_tokenizer(vocab: int):
    """A word-level tokenizer of the model's size with a ChatML template (the GPU machine has no Hub)."""
    tokenizer = train_step._dummy_tokenizer(vocab - 2)  # + the two special tokens = the model's vocabulary
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
    )
    return tokenizer


def part_training(p: dict) -> list[dict]:
    """SFT and SSB (with and without Liger on CUDA) at each batch shape, then the dense reference way."""
    cuda = p["device"] == "cuda"
    runs = [
        (m, b, lig) for b in p["train_batches"] for lig in ([False, True] if cuda else [False]) for m in ("sft", "ssb")
    ]
    runs += [("dense", b, False) for b in p["dense_batches"]]
    results = []
    for method, (batch, prompt, answer), liger in runs:
        try:
            results.append(
                train_step.measure(method, p["shape"], p["device"], batch, prompt, answer, p["steps"], liger=liger)
            )
        except Exception as error:  # noqa: BLE001 - record and go on: one failure must not lose the other figures
            print(f"FAILED {method} liger={liger} {batch}x({prompt}+{answer}): {error!r}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
            continue
        print(json.dumps(results[-1]), flush=True)
    return results


def part_extraction(p: dict) -> dict:
    from ssb_trl.soft_labels.teacher import extract_topk_soft_labels

    dtype = torch.bfloat16 if p["device"] == "cuda" else torch.float32
    model = train_step.build_model(p["shape"], p["device"], dtype).eval()
    e = p["extract"]
    g = torch.Generator().manual_seed(0)
    seqs = [
        torch.randint(0, model.config.vocab_size, (e["prompt"] + e["answer"],), generator=g).tolist()
        for _ in range(e["n"])
    ]
    starts = [e["prompt"]] * e["n"]
    extract_topk_soft_labels(
        model,
        seqs[: e["batch_size"]],
        starts[: e["batch_size"]],
        top_k=64,
        batch_size=e["batch_size"],
        show_progress=False,
    )  # warm-up
    _sync(p)
    t0 = time.perf_counter()
    extract_topk_soft_labels(model, seqs, starts, top_k=64, batch_size=e["batch_size"], show_progress=False)
    _sync(p)
    seconds = time.perf_counter() - t0
    del model
    return {
        "answer_tokens": e["n"] * e["answer"],
        "seconds": seconds,
        "tokens_per_s": e["n"] * e["answer"] / seconds,
        "batch": f"{e['batch_size']} x ({e['prompt']} + {e['answer']})",
    }


def part_generation(p: dict) -> list[dict]:
    from ssb_trl.generation.sampling import Sampling
    from ssb_trl.generation.transformers_engine import TransformersBackend

    dtype = torch.bfloat16 if p["device"] == "cuda" else torch.float32
    model = train_step.build_model(p["shape"], p["device"], dtype).eval()
    tokenizer = chat_tokenizer(model.config.vocab_size)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    q = p["generate"]
    # Words t2000.. and t3000..: none holds "t0" or "t1", the toy tokenizer's special tokens (text holding a special
    # token's string is kept as text, which a word-level tokenizer cannot split, so it would be refused).
    words = " ".join(f"t{3000 + i}" for i in range(q["prompt_len"] - 8))
    prompts = [[{"role": "user", "content": f"t{2000 + i} {words}"}] for i in range(q["prompts"])]
    rows = []
    # Batch 1, the reference's way (a few prompts, short).
    backend = TransformersBackend(model, tokenizer, max_batch_size=1, show_progress=False)
    backend.generate(prompts[:1], Sampling(temperature=0.8, top_k=50, max_new_tokens=4))
    _sync(p)
    t0 = time.perf_counter()
    out = backend.generate(prompts[:2], Sampling(temperature=0.8, top_k=50, max_new_tokens=q["batch1_new_tokens"]))
    _sync(p)
    rows.append(
        {
            "backend": "transformers, batch 1 (reference)",
            "tokens_per_s": count_tokens_per_second(out, time.perf_counter() - t0),
        }
    )
    # The default backend with its own batch choice.
    backend = TransformersBackend(model, tokenizer, show_progress=False)
    t0 = time.perf_counter()
    out = backend.generate(prompts, Sampling(temperature=0.8, top_k=50, max_new_tokens=q["new_tokens"]))
    _sync(p)
    rows.append(
        {
            "backend": f"transformers, default batching ({backend.auto_batch_size(q['prompt_len'] + q['new_tokens'])} rows)",
            "tokens_per_s": count_tokens_per_second(out, time.perf_counter() - t0),
        }
    )
    del model
    return rows


def part_zero3_smoke(p: dict, workdir: str) -> dict:
    """Two SSB steps under `accelerate launch` with ssb_trl/accelerate_configs/deepspeed_zero3.yaml."""
    from datasets import Dataset

    from ssb_trl.soft_labels.io import save_soft_label_dataset
    from ssb_trl.soft_labels.schema import SoftLabelMetadata, tokenizer_fingerprint

    model = train_step.build_model(p["smoke_shape"], "cpu", torch.float32)
    tokenizer = chat_tokenizer(model.config.vocab_size)
    model_dir, data_dir = os.path.join(workdir, "model"), os.path.join(workdir, "data")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = train_step.build_rows(8, 16, 32, len(tokenizer), 16, 2.0)
    meta = SoftLabelMetadata(model_dir, tokenizer_fingerprint(tokenizer), 16, 2.0, "gpu-check", {}, "float32")
    save_soft_label_dataset(Dataset.from_list(rows), data_dir, meta)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(root, "ssb_trl/accelerate_configs/deepspeed_zero3.yaml"),
        "--num_processes",
        "1",
    ]
    train = [
        "--dataset_name",
        data_dir,
        "--model_name_or_path",
        model_dir,
        "--output_dir",
        os.path.join(workdir, "out"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--max_length",
        "64",
    ]
    if p["device"] == "cpu":
        cmd += ["--mixed_precision", "no"]
        train += ["--use_cpu", "true", "--bf16", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd + [os.path.join(root, "recipes/train_ssb.py")] + train,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    ok = proc.returncode == 0 and os.path.exists(os.path.join(workdir, "out", "README.md"))
    if not ok:
        print(proc.stdout[-4000:], proc.stderr[-6000:], sep="\n")
    return {"ok": ok, "seconds": time.perf_counter() - t0, "returncode": proc.returncode}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = os.path.join(ROOT, "benchmarks/data/demo_task_1024.jsonl")  # the demo's task, seed 42 (reasoning-gym)
HELD_OUT = os.path.join(ROOT, "benchmarks/data/demo_task_heldout_300.jsonl")  # seed 1234, none of the above


def part_end_to_end(p: dict, workdir: str) -> list[dict]:
    """The demo's path on the bundled SmolLM2 at scale: preparation (rollouts, teacher, hint check, soft labels),
    SSB and SFT training, evaluation of base / SFT / SSB on held-out questions; each stage timed.

    Preparation runs in this process (so each generation stage's tokens/s is measured), training and evaluation
    through their recipes, as a user runs them. Settings come from recipes/configs/demo*.yaml; only the sizes,
    the device and (on the GPU) ``--dtype auto`` / bf16 differ. The questions are files made from the demo's
    reasoning-gym task (the GPU machine has no reasoning-gym): see benchmarks/data/README.md.
    """
    import yaml

    from ssb_trl.generation.base import GenerationStats
    from ssb_trl.generation.transformers_engine import TransformersBackend
    from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer
    from ssb_trl.prepare import PrepConfig, prepare_ssb_data

    e, cuda = p["end_to_end"], p["device"] == "cuda"
    with open(os.path.join(ROOT, "recipes/configs/demo_data.yaml")) as f:
        settings = yaml.safe_load(f)
    for question_field in ("task_config", "source_seed"):
        settings.pop(question_field, None)
    settings.update(
        dataset_name=QUESTIONS,
        num_questions=e["questions"],
        output_dir=os.path.join(workdir, "data"),
        device=p["device"],
        dtype="auto",  # the default: float32 on the CPU, bfloat16 on a GPU
        shard_size=e["shard_size"],
        **e["prep"],
    )
    config = PrepConfig(**settings)
    rows: list[dict] = []
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, dtype="auto", device=p["device"])
    rows.append({"stage": "load the bundled model", "seconds": time.perf_counter() - started, "detail": ""})

    stage_stats: dict[str, GenerationStats] = {}

    class StageTimedBackend(TransformersBackend):
        """The default backend, adding up each generate() call's stats under the stage that made it."""

        def generate(self, prompts, sampling, seed=0):
            out = super().generate(prompts, sampling, seed)
            stage = {config.rollout_sampling: "rollouts", config.teacher_sampling: "teacher answers"}.get(
                sampling, "hint check (unhinted answers)"
            )
            stage_stats[stage] = stage_stats.get(stage, GenerationStats()).plus(self.last_stats)
            return out

    backend = StageTimedBackend(model, tokenizer, show_progress=False)
    started = time.perf_counter()
    summary = prepare_ssb_data(config, model=model, tokenizer=tokenizer, backend=backend, show_progress=False)
    _sync(p)
    prep_seconds = time.perf_counter() - started
    for stage, stats in stage_stats.items():
        rows.append(
            {
                "stage": f"prep: {stage}",
                "seconds": stats.seconds,
                "detail": f"{stats.new_tokens:,} new tokens, **{stats.tokens_per_second:,.0f} new tokens/s**, "
                f"{stats.sequences} sequences in {stats.batches} batches ({stats.dtype}, up to "
                f"{stats.max_batch_size} rows), {stats.hit_limit} cut at the limit",
            }
        )
    gain = summary.hint_gain or {}
    rows.append(
        {
            "stage": "prep: all (incl. soft labels, files)",
            "seconds": prep_seconds,
            "detail": f"{summary.questions} questions, {summary.pairs} pairs, {summary.teacher_kept} kept answers "
            f"({summary.answer_tokens:,} answer tokens); hint gain {gain.get('gain_points', float('nan')):+.1f} pts",
        }
    )
    del model, backend
    if cuda:
        torch.cuda.empty_cache()
    data_dir = config.output_dir
    train_tokens = _dataset_tokens(data_dir)
    device_args = ["--use_cpu", "false", "--bf16", "true"] if cuda else []
    for label, extra in (("ssb", []), ("sft", ["--kd_weight", "0", "--ce_weight", "1"])):
        out_dir = os.path.join(workdir, label)
        cmd = ["recipes/train_ssb.py", "--config", "recipes/configs/demo.yaml", "--dataset_name", data_dir]
        seconds, log = _run([*cmd, "--output_dir", out_dir, *extra, *device_args, *e["train"]])
        runtime, epoch = _logged(log, "train_runtime"), _logged(log, "epoch")
        rate = train_tokens * epoch / runtime if runtime and epoch else float("nan")
        rows.append(
            {
                "stage": f"train {label.upper()}",
                "seconds": seconds,
                "detail": f"{epoch:.2f} epochs of {train_tokens:,} tokens in {runtime:.1f} s of training: "
                f"**{rate:,.0f} tokens/s**",
            }
        )
    eval_dir = os.path.join(workdir, "eval")
    seconds, _ = _run(
        [
            "recipes/evaluate.py",
            "--config",
            "recipes/configs/demo_eval.yaml",
            "--dataset_name",
            HELD_OUT,
            "--num_questions",
            str(e["eval_questions"]),
            "--output_dir",
            eval_dir,
            "--device",
            p["device"],
            "--dtype",
            "auto",
            "--models",
            f"base={BUNDLED_MODEL}",
            f"sft={os.path.join(workdir, 'sft')}",
            f"ssb={os.path.join(workdir, 'ssb')}",
            *e["eval"],
        ]
    )
    details = []
    for label in ("base", "sft", "ssb"):
        with open(os.path.join(eval_dir, "models", f"{label}.json")) as f:
            result = json.load(f)["result"]  # models/<label>.json: the saved model's settings, identity, result
        greedy = [r["greedy"] for r in result["records"]]
        tokens = sum(g["num_tokens"] for g in greedy)
        accuracy = sum(g["correct"] for g in greedy) / len(greedy)
        settings = result.get("generation_settings", {})
        details.append(
            f"{label} {accuracy:.1%} ({tokens / result['timings']['greedy_s']:,.0f} new tokens/s, "
            f"{settings.get('dtype', '?')})"
        )
    rows.append(
        {
            "stage": f"evaluate base/SFT/SSB on {e['eval_questions']} held-out",
            "seconds": seconds,
            "detail": "; ".join(details),
        }
    )
    return rows


def _dataset_tokens(data_dir: str) -> int:
    from ssb_trl.soft_labels.io import load_soft_label_dataset

    dataset, _ = load_soft_label_dataset(data_dir)
    return sum(len(ids) for ids in dataset["input_ids"])


def _run(args: list[str]) -> tuple[float, str]:
    """One recipe in a subprocess from the project root; (wall seconds, its output). Fails loudly."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-6000:], sep="\n")
        raise RuntimeError(f"{' '.join(args[:1])} failed with exit code {proc.returncode}")
    return seconds, proc.stdout + proc.stderr


def _logged(log: str, key: str) -> float:
    """The last value the trainer logged for ``key`` (its dict lines: {'train_runtime': '52.1', ...})."""
    import re

    found = re.findall(rf"'{key}': '?([0-9.]+)'?", log)
    return float(found[-1]) if found else float("nan")


def _sync(p: dict) -> None:
    if p["device"] == "cuda":
        torch.cuda.synchronize()


def count_tokens_per_second(completions: list, seconds: float) -> float:
    """New tokens per second over a generate() result."""
    total = sum(len(c.token_ids) for per_prompt in completions for c in per_prompt)
    return total / seconds if seconds > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="small shape on the CPU (what CI runs)")
    parser.add_argument("--parts", default="training,extraction,generation,zero3,end_to_end")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = PROFILES["tiny" if args.tiny else "gpu"]
    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny on a CPU machine")
    parts = args.parts.split(",")
    card = torch.cuda.get_device_name() if p["device"] == "cuda" else "cpu"
    sections = [f"Device: {card}; torch {torch.__version__}; shape {p['shape']} (random weights)"]
    output = args.output or (
        "benchmarks/results/gpu_check_tiny.md" if args.tiny else "benchmarks/results/gpu_check.md"
    )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)

    def add(section: str) -> None:  # written as it goes, so a cut-off run keeps what it measured
        sections.append(section)
        with open(output, "w") as f:
            f.write("\n\n".join(sections) + "\n")
        print("\n" + section, flush=True)

    failed = False
    if "training" in parts:
        results = part_training(p)
        failed |= not results
        add("### Training step (forward + backward)\n\n" + train_step.table(results))
    if "extraction" in parts:
        r = part_extraction(p)
        add(
            f"### Soft-label extraction (top-64)\n\n{r['answer_tokens']} answer tokens in {r['seconds']:.2f} s, "
            f"batch {r['batch']}: **{r['tokens_per_s']:,.0f} answer tokens/s**"
        )
    if "generation" in parts:
        rows = part_generation(p)
        lines = ["| backend | new tokens/s |", "| --- | --- |"]
        lines += [f"| {r['backend']} | {r['tokens_per_s']:,.0f} |" for r in rows]
        add("### Rollout generation (sampling, T=0.8)\n\n" + "\n".join(lines))
    if "zero3" in parts:
        with tempfile.TemporaryDirectory() as workdir:
            r = part_zero3_smoke(p, workdir)
        failed |= not r["ok"]
        add(
            "### accelerate launch + deepspeed_zero3.yaml, 2 SSB steps\n\n"
            f"{'passed' if r['ok'] else 'FAILED'} in {r['seconds']:.0f} s"
        )
    if "end_to_end" in parts:
        with tempfile.TemporaryDirectory() as workdir:
            started = time.perf_counter()
            try:
                rows = part_end_to_end(p, workdir)
            except Exception as error:  # noqa: BLE001 - the other parts' figures are already written
                rows, failed = [{"stage": "FAILED", "seconds": 0.0, "detail": repr(error)}], True
            total = time.perf_counter() - started
        lines = ["| stage | wall s | what |", "| --- | ---: | --- |"]
        lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['detail']} |" for r in rows]
        lines.append(f"| **whole path** | **{total:.1f}** | |")
        e = p["end_to_end"]
        add(
            f"### End to end, bundled SmolLM2-135M: {e['questions']} questions -> SSB and SFT -> evaluation on "
            f"{e['eval_questions']} held-out\n\n" + "\n".join(lines)
        )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Time and peak memory of one training step (forward + backward): SSBTrainer vs TRL's SFTTrainer vs dense KD.

All three run through a real trainer's `training_step` on the same random-weight model and the same
batch (prompt + answer tokens, completion-only loss):
  sft    TRL SFTTrainer, its default loss (chunked NLL on completion tokens)
  ssb    SSBTrainer, top-K + tail KD at T=2, chunked over answer tokens
  dense  the reference SSB code's way: full [batch, seq, vocab] logits and a dense fp32 teacher
         tensor [batch, answer, vocab], full-vocabulary KL

CPU (default): each method runs in its own subprocess; memory is the process's peak RSS.
CUDA: methods run one after another in this process; memory is torch's peak allocated.

    python benchmarks/train_step.py                       # SmolLM2-135M shape, 4 x 1024, CPU
    python benchmarks/train_step.py --shape tiny --steps 1  # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = {
    # SmolLM2-135M-Instruct (the embedded default model)
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
    # Qwen2.5-3B-Instruct (the paper's model)
    "qwen2.5-3b": dict(
        model_type="qwen2",
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
    ),
    "tiny": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), max_position_embeddings=4096, **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def build_rows(batch: int, prompt_len: int, answer_len: int, vocab: int, top_k: int, temperature: float):
    """Rows in the soft-label format (SFT reads input_ids + completion_mask, SSB the soft labels too)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        ids = torch.randint(0, vocab, (prompt_len + answer_len,), generator=g)
        teacher = torch.log_softmax(torch.randn(answer_len, vocab, generator=g) * 3 / temperature, -1)
        values, topk = teacher.topk(top_k, -1)
        rows.append(
            {
                "input_ids": ids.tolist(),
                "completion_mask": [0] * prompt_len + [1] * answer_len,
                "teacher_topk_ids": topk.int().tolist(),
                "teacher_topk_logprobs": values.half().float().tolist(),
            }
        )
    return rows


def _common_args(output_dir: str, device: str, batch: int, liger: bool, seq_len: int):
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        gradient_checkpointing=True,
        max_length=seq_len,
        use_liger_kernel=liger,
        save_strategy="no",
        disable_tqdm=True,
    )


def make_trainer(method: str, model, rows, device: str, liger: bool, temperature: float, tmp: str):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ssb_trl import SSBConfig, SSBTrainer

    batch, seq_len = len(rows), len(rows[0]["input_ids"])
    tokenizer = _dummy_tokenizer(model.config.vocab_size)
    common = _common_args(tmp, device, batch, liger, seq_len)
    if method == "ssb":
        args = SSBConfig(**common, temperature=temperature, check_soft_label_metadata=False)
        return SSBTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    plain = Dataset.from_list([{k: r[k] for k in ("input_ids", "completion_mask")} for r in rows])
    args = SFTConfig(**common, completion_only_loss=True)
    if method == "sft":
        return SFTTrainer(model, args=args, train_dataset=plain, processing_class=tokenizer)
    if method == "dense":
        return DenseKDTrainer(model, args=args, train_dataset=plain, processing_class=tokenizer)
    raise ValueError(f"unknown method {method!r}")


def _dummy_tokenizer(vocab: int):
    """A real fast tokenizer with the model's vocabulary size (ids are random anyway)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab_map = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t0")


def _dense_trainer_class():
    from trl import SFTTrainer

    class DenseKD(SFTTrainer):
        """The reference code's way: full logits and a dense fp32 teacher over the whole vocabulary."""

        temperature = 2.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            answer = labels[:, 1:] != -100
            student = torch.log_softmax(logits[:, :-1].float() / self.temperature, -1)
            # The dense teacher tensor the reference loads per batch: [batch, seq, vocab] fp32.
            teacher = torch.log_softmax(torch.randn_like(student) * 3, -1)
            kl = (teacher.exp() * (teacher - student)).sum(-1)
            return (kl * answer).sum() / answer.sum() * self.temperature**2

    return DenseKD


def DenseKDTrainer(*args, **kwargs):  # noqa: N802 - a factory that reads like the class it builds
    return _dense_trainer_class()(*args, **kwargs)


def measure(
    method: str,
    shape: str,
    device: str,
    batch: int,
    prompt_len: int,
    answer_len: int,
    steps: int,
    liger: bool = False,
    top_k: int = 64,
    temperature: float = 2.0,
    tmp: str = "/tmp/ssb_bench",
) -> dict:
    """Seconds per forward+backward (median over `steps` after one warm-up) and peak memory in GiB.

    Activation checkpointing is on for every method (SFTConfig's default), as in a real run."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(shape, device, dtype)
    rows = build_rows(batch, prompt_len, answer_len, model.config.vocab_size, top_k, temperature)
    trainer = make_trainer(method, model, rows, device, liger, temperature, tmp)
    inputs = next(iter(trainer.get_train_dataloader()))
    n_items = (inputs["labels"][:, 1:] != -100).sum().to(trainer.args.device)
    trainer.model.train()
    _enable_activation_checkpointing(trainer.model)  # Trainer does this in train(), which is bypassed here
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated() / 2**30  # model + inputs; shows leaks between runs
    for i in range(steps + 1):
        start = time.perf_counter()
        trainer.training_step(trainer.model, inputs, n_items)
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up kernels and allocators
            times.append(time.perf_counter() - start)
        trainer.model.zero_grad(set_to_none=True)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    result = {
        "method": method + ("+liger" if liger else ""),
        "shape": shape,
        "batch": f"{batch} x ({prompt_len} + {answer_len})",
        "s_per_step": statistics.median(times) if times else float("nan"),
        "peak_gib": peak,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    if device == "cuda":
        result["allocated_before_gib"] = allocated_before
    trainer.accelerator.free_memory()
    del trainer, model, inputs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def _enable_activation_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def table(results: list[dict], baseline: str = "sft") -> str:
    """Markdown table with time and memory ratios to the SFT row of the same shape/batch/liger setting."""
    lines = [
        "| shape | batch x (prompt + answer) | method | s/step | peak GiB | time / SFT | memory / SFT |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        suffix = "+liger" if r["method"].endswith("+liger") else ""
        base = next(
            (
                b
                for b in results
                if b["method"] == baseline + suffix and b["batch"] == r["batch"] and b["shape"] == r["shape"]
            ),
            None,
        )
        ratio_t = f"{r['s_per_step'] / base['s_per_step']:.3f}" if base else "-"
        ratio_m = f"{r['peak_gib'] / base['peak_gib']:.3f}" if base else "-"
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['method']} | {r['s_per_step']:.3f} | {r['peak_gib']:.2f} "
            f"| {ratio_t} | {ratio_m} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--answer_len", type=int, default=768)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="sft,ssb,dense")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    parser.add_argument("--output", default="benchmarks/results/train_step_cpu.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = dict(
        shape=args.shape,
        device=args.device,
        batch=args.batch,
        prompt_len=args.prompt_len,
        answer_len=args.answer_len,
        steps=args.steps,
        liger=args.liger,
    )
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, **kwargs)))
        return
    results = []
    for method in args.methods.split(","):
        if args.device == "cpu":  # a fresh process per method, so peak RSS is that method's own
            cmd = [
                sys.executable,
                __file__,
                "--one",
                method,
                "--shape",
                args.shape,
                "--device",
                "cpu",
                "--batch",
                str(args.batch),
                "--prompt_len",
                str(args.prompt_len),
                "--answer_len",
                str(args.answer_len),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT ") :]))
        else:
            results.append(measure(method, **kwargs))
        print(json.dumps(results[-1]), flush=True)
    text = table(results)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(f"Command: `python benchmarks/train_step.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    main()

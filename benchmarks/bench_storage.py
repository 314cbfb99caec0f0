"""Disk bytes per answer token of the soft-label dataset, for K in {16, 32, 64, 128}, vs the reference.

The reference stores full-vocabulary float32 logits: 4 x vocab bytes per answer token. Here the real
pipeline rows (student input_ids, completion_mask, prompt/completion messages, top-K ids int32 and
log-probs float16/float32) from real SmolLM2 teacher passes are saved with `save_soft_label_dataset`
(Arrow, what `load_from_disk` reads) and as Parquet (what `push_to_hub` uploads). The compact format
(`logprob_dtype="uint8"`, format version 2: uint16 ids and 8-bit log-prob codes in fixed-size lists) is
measured beside today's float16/float32, and so are sampled soft labels (format version 3, N draws per token as
N compact entries) and Parquet compressed with zstd.

    python benchmarks/bench_storage.py --questions 16 --max_new_tokens 128
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from _ssb_bench_data import load_bundled, machine, make_sequences, questions, write_results

from ssb_trl.soft_labels.io import save_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelMetadata, features, tokenizer_fingerprint
from ssb_trl.soft_labels.teacher import extract_soft_labels, extract_topk_soft_labels
from ssb_trl.tasks.prompts import PROMPT_TEMPLATE_VERSION, student_messages

KS = (16, 24, 32, 48, 64, 128)
DTYPES = ("uint8", "float16", "float32")
SAMPLED_DRAWS = (16, 32, 64)
QWEN25_VOCAB = 151936


def build_dataset(seqs, qs, labels, k: int, dtype: str, vocab: int) -> datasets.Dataset:
    row_features = features(dtype, vocab_size=vocab, top_k=k)
    columns: dict[str, list] = {name: [] for name in row_features}
    for i, q in enumerate(qs):
        start = seqs.student_starts[i]
        answer_len = len(seqs.student[i]) - start
        ids, logprobs = labels[i]
        columns["id"].append(q.id)
        columns["answer"].append(q.answer)
        columns["prompt"].append(student_messages(q.question))
        columns["completion"].append([{"role": "assistant", "content": seqs.answer_texts[i]}])
        columns["input_ids"].append(seqs.student[i])
        columns["completion_mask"].append([0] * start + [1] * answer_len)
        columns["teacher_topk_ids"].append(ids[:, :k].tolist())
        columns["teacher_topk_logprobs"].append(logprobs[:, :k].tolist())
    return datasets.Dataset.from_dict(columns, features=row_features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args()

    model, tokenizer = load_bundled()
    seqs = make_sequences(model, tokenizer, args.questions, args.max_new_tokens)
    qs = questions(args.questions)
    answer_tokens = sum(len(s) - start for s, start in zip(seqs.student, seqs.student_starts))
    vocab = model.config.vocab_size
    rows = []

    def measure(k: int, dtype: str, labels, mode: str) -> None:
        dataset = build_dataset(seqs, qs, labels, k, dtype, vocab)
        soft = sum(dataset.data.column(c).nbytes for c in ("teacher_topk_ids", "teacher_topk_logprobs"))
        metadata = SoftLabelMetadata(
            teacher_model="bundled:smollm2-135m-instruct",
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            top_k=k,
            temperature=2.0,
            prompt_template_version=PROMPT_TEMPLATE_VERSION,
            logprob_dtype=dtype,
            soft_label_mode=mode,
            soft_label_draws=k if mode == "sampled" else None,
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_soft_label_dataset(dataset, str(Path(tmp) / "arrow"), metadata)
            arrow = sum(p.stat().st_size for p in (Path(tmp) / "arrow").glob("data-*.arrow"))
            dataset.to_parquet(str(Path(tmp) / "data.parquet"))
            parquet = (Path(tmp) / "data.parquet").stat().st_size
            pq.write_table(dataset.data.table, str(Path(tmp) / "zstd.parquet"), compression="zstd")
            zstd = (Path(tmp) / "zstd.parquet").stat().st_size
        rows.append((k, mode, dtype, *(size / answer_tokens for size in (arrow, parquet, zstd, soft))))

    for dtype in DTYPES:
        labels = extract_topk_soft_labels(
            model, seqs.teacher, seqs.teacher_starts, top_k=max(KS), temperature=2.0, logprob_dtype=dtype
        )
        for k in KS:
            measure(k, dtype, labels, "topk")
    for draws in SAMPLED_DRAWS:  # N draws stored as N entries: the bytes of top-N, by construction
        labels = extract_soft_labels(
            model, seqs.teacher, seqs.teacher_starts, mode="sampled", num_draws=draws,
            seeds=list(range(len(seqs.teacher))), temperature=2.0, logprob_dtype="uint8",
        )  # fmt: skip
        measure(draws, "uint8", labels, "sampled")

    lines = [
        "# Soft-label storage: bytes per answer token on disk",
        "",
        f"Real SmolLM2-135M-Instruct teacher passes (T = 2) over {args.questions} hinted prompts + sampled answers "
        f"({answer_tokens} answer tokens; whole rows: prompt ids, mask, messages and soft labels). "
        f"Reference (full-vocabulary float32): SmolLM2 4 x {vocab} = {4 * vocab:,} B/token; "
        f"Qwen2.5 4 x {QWEN25_VOCAB} = {4 * QWEN25_VOCAB:,} B/token. Machine: {machine()}.",
        "",
        "| K (or N draws) | format (log-prob dtype) | Arrow (save_to_disk) B/token | of which soft labels | "
        "Parquet (Hub, snappy) B/token | Parquet zstd B/token | reference / Arrow (SmolLM2) | "
        "reference / Arrow (Qwen2.5 vocab) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"uint8": "compact v2 (uint16 ids, uint8 codes)", "float16": "float16", "float32": "float32"}
    for k, mode, dtype, arrow, parquet, zstd, soft in rows:
        name = "sampled, compact (format v3)" if mode == "sampled" else names[dtype]
        lines.append(
            f"| {k} | {name} | {arrow:,.0f} | {soft:,.0f} | {parquet:,.0f} | {zstd:,.0f} | {4 * vocab / arrow:,.0f}x | "
            f"{4 * QWEN25_VOCAB / arrow:,.0f}x |"
        )
    lines += [
        "",
        "The soft labels alone cost K x (4 + 2) + 8 bytes per token with float16 log-probs (K x 8 + 8 with float32;",
        "the 8 are two list offsets), and K x (2 + 1) in the compact format (uint16 ids, uint8 log-prob codes, fixed-",
        "size lists without offsets; K x (4 + 1) above 65,536 ids); the rest is the row's prompt ids, mask and",
        "message text, spread over its answer tokens. The top-K size does not depend on the vocabulary, so the",
        "saving grows with it. Sampled soft labels store N draws as N entries (the distinct drawn ids, then padding):",
        "the bytes of top-N in the same dtype. zstd (`pyarrow.parquet.write_table(dataset.data.table, path, compression='zstd')`) shrinks the",
        "Parquet file further than the snappy that `push_to_hub` writes.",
        "",
        f"Command: `python benchmarks/bench_storage.py --questions {args.questions} --max_new_tokens {args.max_new_tokens}`",
    ]
    write_results("bench_storage", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

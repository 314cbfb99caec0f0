"""Inspect a soft-label dataset before training on it: size, K, T, teacher, mode, top-K mass, storage, one example.

    ssb-trl inspect outputs/demo/data
    ssb-trl inspect --dataset_name user/my-ssb-data --row 3 --max_tokens 40

The top-K mass is the share of the teacher's probability held by the stored K ids on each answer token
(the rest is the tail bucket); a low mass means K is small for this teacher and temperature. Sampled soft labels
(`--soft_label_mode sampled`) hold the whole mass; for them the distinct drawn tokens per position are reported.

It first runs the checks training runs that need no model (`ssb_trl.soft_labels.checks`: empty data, missing
columns, NaN, raw logits, mixed K, misaligned rows, answers that are not the teacher's sampled tokens...) and,
when the tokenizer loads, compares it with the one the soft labels were made with: a dataset that breaks
the contract is reported with the row and the fix, and the command exits with status 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import TrlParser

from ssb_trl.models import load_tokenizer
from ssb_trl.scripts.common import configure_logging, run_script
from ssb_trl.soft_labels.checks import validate_soft_label_dataset
from ssb_trl.soft_labels.codec import LOGPROB_CODE_DTYPE, decode_logprobs
from ssb_trl.soft_labels.io import load_soft_label_dataset, saved_dataset_bytes
from ssb_trl.soft_labels.schema import SoftLabelError, SoftLabelMetadata, tokenizer_fingerprint


@dataclass
class InspectArguments:
    dataset_name: str = field(
        metadata={"help": "Soft-label dataset: a directory written by `ssb-trl prepare`, or a Hub id."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to inspect (Hub datasets and DatasetDicts)."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to decode the example with; default: the teacher's."}
    )
    row: int = field(default=0, metadata={"help": "Row shown decoded, with the teacher's top-5 per answer token."})
    max_tokens: int = field(default=24, metadata={"help": "Answer tokens shown for that row."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the statistics to this JSON file."})


def _flat(dataset: Dataset, column: str) -> np.ndarray:
    """[n_answer_tokens, K] array from a list<list<number>> column, without going through Python lists."""
    chunked = dataset.data.column(column)
    per_token = pc.list_flatten(chunked)
    k = len(per_token[0]) if len(per_token) else 0
    return pc.list_flatten(per_token).to_numpy(zero_copy_only=False).reshape(-1, k)


def soft_label_format(dataset: Dataset, metadata: SoftLabelMetadata) -> str:
    """The storage format in words: version, id and log-prob types."""
    ids_type = dataset.data.column("teacher_topk_ids").type
    while hasattr(ids_type, "value_type"):
        ids_type = ids_type.value_type
    kind = f"sampled, N = {metadata.soft_label_draws} draws" if metadata.sampled else "top-K"
    if metadata.logprob_dtype == LOGPROB_CODE_DTYPE:
        return f"compact {kind} (format version {metadata.format_version}: {ids_type} ids, uint8 log-prob codes)"
    return f"{kind} (format version {metadata.format_version}: {ids_type} ids, {metadata.logprob_dtype} log-probs)"


def rows_are(metadata: SoftLabelMetadata) -> str:
    """What the rows' completions are, as the metadata records it (the job that made them, and its mode)."""
    source = metadata.source if isinstance(metadata.source, dict) else {}
    if source.get("kind") == "ssb-trl label":
        return f"completions labelled by `ssb-trl label` ({source.get('completions', 'unrecorded')})"
    if "teacher_hint" not in source:
        return "not recorded"
    mode = source.get("train_on", "teacher_answers")
    kinds = source.get("rows_by_kind") or {}
    counts = f" ({', '.join(f'{n} {kind}' for kind, n in kinds.items())})" if kinds else ""
    words = {
        "teacher_answers": "the hinted teacher's answers (SSB)",
        "rollouts": "the student's rollouts under the hinted teacher's soft labels (on-policy SSB)",
        "correct_rollouts": "the student's verified rollouts (RFT)",
    }
    return f"{words.get(mode, mode)}, `ssb-trl prepare --train_on {mode}`{counts}"


def soft_label_statistics(dataset: Dataset, metadata: SoftLabelMetadata, path: str) -> dict[str, Any]:
    """Rows, answer tokens, K, T, teacher, the mode, percentiles of the top-K mass, bytes per answer token, and for
    sampled soft labels the distinct drawn tokens per position (entries of probability >= 1 / (2N); padding is
    ~0)."""
    logprobs = _flat(dataset, "teacher_topk_logprobs")
    if metadata.logprob_dtype == LOGPROB_CODE_DTYPE:
        logprobs = decode_logprobs(logprobs)
    logprobs = logprobs.astype(np.float64)
    mass = np.exp(logprobs).sum(-1)
    answer_lengths = np.array([len(ids) for ids in dataset["teacher_topk_ids"]])
    n_tokens = int(answer_lengths.sum())
    on_disk = saved_dataset_bytes(path)  # the data files, as the label and prepare summaries count them
    distinct = None
    if metadata.sampled:
        per_position = (np.exp(logprobs) >= 0.5 / metadata.soft_label_draws).sum(-1)
        distinct = {"mean": float(per_position.mean()), "median": float(np.median(per_position))}
    return {
        "dataset": path,
        "rows": len(dataset),
        "answer_tokens": n_tokens,
        "answer_tokens_per_row": {"mean": float(answer_lengths.mean()), "min": int(answer_lengths.min()),
                                  "max": int(answer_lengths.max())},
        "top_k": metadata.top_k,
        "temperature": metadata.temperature,
        "teacher_model": metadata.teacher_model,
        "rows_are": rows_are(metadata),
        "prompt_template_version": metadata.prompt_template_version,
        "logprob_dtype": metadata.logprob_dtype,
        "format": soft_label_format(dataset, metadata),
        "soft_label_mode": metadata.soft_label_mode,
        "soft_label_draws": metadata.soft_label_draws,
        "distinct_tokens_per_position": distinct,
        "top_k_mass_percentiles": {f"p{q}": float(np.percentile(mass, q)) for q in (5, 25, 50, 75, 95)},
        "bytes_per_answer_token": {
            "in_memory": dataset.data.nbytes / max(n_tokens, 1),
            "soft_labels": sum(dataset.data.column(c).nbytes for c in ("teacher_topk_ids", "teacher_topk_logprobs"))
            / max(n_tokens, 1),
            "on_disk": None if on_disk is None else on_disk / max(n_tokens, 1),
        },
    }  # fmt: skip


def render_example(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase | None, row: int, max_tokens: int, codes: bool = False
) -> str:
    """One row: the student prompt, then each answer token with the teacher's top-5 and their probabilities.

    `codes`: the log-probs are compact uint8 codes (decoded for display)."""
    if not 0 <= row < len(dataset):
        raise ValueError(f"--row {row} is outside the dataset (0..{len(dataset) - 1})")
    example = dataset[row]
    ids, mask = example["input_ids"], example["completion_mask"]
    answer = [t for t, m in zip(ids, mask) if m]
    name = tokenizer.decode if tokenizer is not None else str
    prompt = [t for t, m in zip(ids, mask) if not m]
    lines = [f"Row {row}: {len(prompt)} prompt tokens, {len(answer)} answer tokens", "", "Prompt:", ""]
    lines.append(tokenizer.decode(prompt) if tokenizer is not None else str(prompt))
    lines += ["", "| # | answer token | teacher top-5 (probability) |", "| ---: | --- | --- |"]
    for j, (token, top_ids, top_lp) in enumerate(
        zip(answer, example["teacher_topk_ids"], example["teacher_topk_logprobs"])
    ):
        if j == max_tokens:
            lines.append(f"| ... | {len(answer) - max_tokens} more | |")
            break
        top_lp = decode_logprobs(np.asarray(top_lp[:5])) if codes else top_lp[:5]
        top = ", ".join(f"{name([i])!r} {np.exp(lp):.2f}" for i, lp in zip(top_ids[:5], top_lp))
        lines.append(f"| {j} | {name([token])!r} | {top} |")
    return "\n".join(lines)


def render_statistics(stats: dict[str, Any]) -> str:
    mass = stats["top_k_mass_percentiles"]
    size = stats["bytes_per_answer_token"]
    on_disk = "n/a (not a local dataset)" if size["on_disk"] is None else f"{size['on_disk']:.0f}"
    lengths = stats["answer_tokens_per_row"]
    distinct = stats["distinct_tokens_per_position"]
    mass_name = "stored mass (sampled: 1 up to rounding)" if distinct else "top-K mass"
    return "\n".join(
        [
            f"Soft-label dataset {stats['dataset']}",
            "",
            "| what | value |",
            "| --- | --- |",
            f"| rows | {stats['rows']} |",
            f"| answer tokens | {stats['answer_tokens']} (per row: mean {lengths['mean']:.1f}, "
            f"min {lengths['min']}, max {lengths['max']}) |",
            f"| K, temperature | {stats['top_k']}, {stats['temperature']} |",
            f"| format | {stats['format']} |",
            *(
                [
                    f"| distinct drawn tokens per position (mean / median) | {distinct['mean']:.1f} / "
                    f"{distinct['median']:.0f} of {stats['soft_label_draws']} draws |"
                ]
                if distinct
                else []
            ),
            f"| teacher | {stats['teacher_model']} (prompts {stats['prompt_template_version']}) |",
            f"| rows are | {stats['rows_are']} |",
            f"| {mass_name} p5 / p25 / p50 / p75 / p95 | "
            + " / ".join(f"{mass[p]:.3f}" for p in ("p5", "p25", "p50", "p75", "p95"))
            + " |",
            f"| bytes per answer token | on disk {on_disk}, in memory {size['in_memory']:.0f}, of which soft labels "
            f"{size['soft_labels']:.0f} |",
        ]
    )


def check_dataset(
    dataset: Dataset, metadata: SoftLabelMetadata, tokenizer: PreTrainedTokenizerBase | None, tokenizer_name: str
) -> None:
    """The contract checks training runs that need no model, plus the tokenizer the rows will be decoded with."""
    validate_soft_label_dataset(dataset, metadata=metadata)
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != metadata.tokenizer_fingerprint:
        raise SoftLabelError(
            f"the soft labels were made with another tokenizer than {tokenizer_name!r} (dataset: "
            f"{metadata.tokenizer_fingerprint}, {tokenizer_name!r}: {tokenizer_fingerprint(tokenizer)}): training a "
            "model with that tokenizer would be refused. Pass the teacher's tokenizer with --tokenizer_name_or_path "
            "to inspect the rows, or rebuild the soft labels with this one."
        )


def main(args: InspectArguments) -> dict[str, Any]:
    """Check the dataset, then print its statistics and one decoded example; return the statistics.

    A dataset that breaks the contract exits with status 1 and the problem (row and fix) on stderr.
    """
    tokenizer_name = args.tokenizer_name_or_path
    try:
        dataset, metadata = load_soft_label_dataset(args.dataset_name, split=args.dataset_split)
        tokenizer_name = tokenizer_name or metadata.teacher_model
        try:
            tokenizer = load_tokenizer(tokenizer_name, require_chat_template=False)
        except (OSError, ValueError, ImportError) as error:
            print(f"(tokenizer {tokenizer_name!r} could not be loaded, so ids are shown: {error})")
            tokenizer = None
        check_dataset(dataset, metadata, tokenizer, tokenizer_name)
    except SoftLabelError as error:
        raise SystemExit(f"ssb-trl inspect: {args.dataset_name} cannot be trained on: {error}") from error
    if not 0 <= args.row < len(dataset):
        raise SystemExit(f"ssb-trl inspect: --row {args.row} is outside the dataset (rows 0..{len(dataset) - 1}).")
    stats = soft_label_statistics(dataset, metadata, args.dataset_name)
    codes = metadata.logprob_dtype == LOGPROB_CODE_DTYPE
    example = render_example(dataset, tokenizer, args.row, args.max_tokens, codes=codes)
    print(render_statistics(stats), example, sep="\n\n")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(stats, f, indent=2)
    return stats


class InspectParser(TrlParser):
    """TrlParser that also takes the dataset as a positional argument, as `ssb-trl inspect DIR`."""

    def parse_args_and_config(self, args: list[str] | None = None, **kwargs: Any) -> tuple:
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_args_and_config(self._dataset_as_flag(args), **kwargs)

    def _dataset_as_flag(self, args: list[str]) -> list[str]:
        """`DIR` -> `--dataset_name DIR`: the one argument that is neither a flag nor a flag's value.

        The dataclass fields are all flags (HfArgumentParser makes no positionals), so the lone positional can only
        be the dataset; anything else is left for argparse to refuse.
        """
        positional, expects_value = [], False
        for index, arg in enumerate(args):
            if expects_value:
                expects_value = False
            elif arg.startswith("-") and len(arg) > 1:
                action = self._option_string_actions.get(arg.split("=", 1)[0])
                expects_value = "=" not in arg and action is not None and action.nargs != 0
            else:
                positional.append(index)
        if len(positional) != 1 or "--dataset_name" in args or any(a.startswith("--dataset_name=") for a in args):
            return args
        (index,) = positional
        return ["--dataset_name", args[index], *args[:index], *args[index + 1 :]]


def make_parser(prog: str | None = None) -> TrlParser:
    return InspectParser(
        (InspectArguments,),
        prog=prog,
        description="The dataset may come first, without --dataset_name: ssb-trl inspect outputs/demo/data --row 3",
    )


if __name__ == "__main__":
    configure_logging()
    run_script(main, make_parser())

"""Label a prompt/completion dataset with any teacher's soft labels, for offline distillation with `ssb-trl train`.

    ssb-trl label --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct \
        --student_model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name data.jsonl --output_dir labelled
    ssb-trl label --config my_label.yaml --num_processes 8          # via accelerate launch, shards split
    ssb-trl train --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name labelled --output_dir student

Every field of `ssb_trl.label.config.LabelConfig` is a flag and a YAML key. The input is TRL's prompt-completion
format (conversational or plain strings) or its conversational `messages` format (the last assistant message is the
completion); without a completion the teacher writes it (greedy by default; --teacher_temperature for sampled ones).
A stopped run resumes when started again with the same --output_dir: finished shards are kept.
"""

from __future__ import annotations

from trl import TrlParser

from ssb_trl.label.config import LabelConfig
from ssb_trl.label.job import LabelSummary, label_dataset
from ssb_trl.scripts.common import configure_logging, run_script


def main(label_config: LabelConfig) -> LabelSummary:
    """Run the (resumable, multi-process) labelling; the summary is logged and written beside the dataset."""
    summary = label_dataset(label_config)
    print(
        f"Soft-label dataset written to {summary.output_dir} ({summary.rows_written} rows, "
        f"{summary.answer_tokens} completion tokens)"
    )
    return summary


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((LabelConfig,), prog=prog)


if __name__ == "__main__":
    configure_logging()
    run_script(main, make_parser())

"""Prepare an SSB soft-label dataset: rollouts -> grading -> pairs -> hinted teacher -> soft labels.

    ssb-trl prepare --config recipes/configs/prepare_gsm8k.yaml
    ssb-trl prepare --config recipes/configs/prepare_gsm8k.yaml --num_processes 8   # via accelerate launch
    accelerate launch --num_processes 8 -m ssb_trl.scripts.prepare --config ... --output_dir data/gsm8k_ssb

Every field of `ssb_trl.prepare.PrepConfig` (the question source fields shared with `ssb-trl evaluate`, then
the model, rollouts, teacher, soft labels and engine) is a flag and a YAML key. A killed run resumes when started
again with the same settings and `--output_dir`. `--push_to_hub --hub_dataset_id user/name` uploads the
result (untested here: no network in this project's CI).
"""

from __future__ import annotations

from trl import TrlParser

from ssb_trl.prepare import PrepConfig, PrepSummary, prepare_ssb_data
from ssb_trl.scripts.common import configure_logging, run_script


def main(prep_config: PrepConfig) -> PrepSummary:
    """Run the (resumable, multi-process) preparation; the summary table is logged."""
    summary = prepare_ssb_data(prep_config)
    print(f"SSB dataset written to {summary.output_dir} ({summary.rows} rows)")
    return summary


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((PrepConfig,), prog=prog)


if __name__ == "__main__":
    configure_logging()
    run_script(main, make_parser())

"""Prepare an SSB soft-label dataset: rollouts -> grading -> pairs -> hinted teacher -> soft labels.

With no arguments it runs the embedded demo: the bundled SmolLM2-135M-Instruct on 32 one-digit
reasoning-gym `basic_arithmetic` questions, offline, in about five minutes on a 2-core CPU:

    python recipes/prepare_ssb_data.py

Real runs take a YAML config and/or flags (every field of `ssb_trl.pipeline.PrepConfig`):

    python recipes/prepare_ssb_data.py --config recipes/configs/prepare_gsm8k.yaml
    accelerate launch --num_processes 8 recipes/prepare_ssb_data.py --config ... --output_dir data/gsm8k_ssb

A killed run resumes when started again with the same settings and `--output_dir`. `--push_to_hub
--hub_dataset_id user/name` uploads the result (untested here: no network in this project's CI).
"""

from __future__ import annotations

import logging

from trl import TrlParser

from ssb_trl.pipeline import PrepConfig, prepare_ssb_data


def main(config: PrepConfig) -> None:
    summary = prepare_ssb_data(config)  # logs the summary table
    print(f"SSB dataset written to {summary.output_dir} ({summary.teacher_kept} rows)")


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = TrlParser((PrepConfig,))
    (prep_config,) = parser.parse_args_and_config()
    main(prep_config)

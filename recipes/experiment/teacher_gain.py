"""Does the hint help? The hinted teacher's accuracy vs the same model unhinted, on the questions it answered.

Preparation measures this itself in every run (``--hint_check_samples``, on by default: see
:mod:`ssb_trl.prepare.hint_gain`); this script runs (or resumes) the preparation of a folder, so the check is done on
every finished shard, and writes the figures as ``teacher_gain.json`` for the experiment's choice rules
(``choose.py``). A run that keeps no teacher answer still has a gain to report.

    python recipes/experiment/teacher_gain.py --config recipes/experiment/configs/prep.yaml \
        --output_dir outputs/experiment/select/1digit

Prints one line of figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from trl import TrlParser

from ssb_trl.prepare import NoPairsError, PrepConfig, prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.prepare.summary import summarize
from ssb_trl.scripts.common import configure_logging
from ssb_trl.tasks import load_questions


def teacher_gain(config: PrepConfig) -> dict:
    """Prepare (resumably) and return the hint gain in the shape choose.py reads; also written to teacher_gain.json."""
    try:
        prepare_ssb_data(config)
    except NoPairsError:
        pass  # no kept teacher answer: the hinted and unhinted accuracies are still measured
    num_shards = -(-len(load_questions(config)) // config.shard_size)
    summary = summarize(PrepareJob.work_dir(config.output_dir), num_shards, config, vocab_size=0)
    gain = summary.hint_gain
    if gain is None:
        raise ValueError(
            f"{config.output_dir}: no hint gain was measured (no question was asked, or --hint_check_samples 0)"
        )
    result = {
        "output_dir": config.output_dir,
        "teacher_hint": summary.teacher_hint,
        "questions_with_rollouts": summary.questions,
        "rollout_accuracy": summary.rollout_accuracy,
        "paired_questions": gain["questions"],
        "hinted_accuracy": gain["hinted_accuracy"],
        "hinted_interval": gain["hinted_interval"],
        "unhinted_accuracy": gain["unhinted_accuracy"],
        "unhinted_interval": gain["unhinted_interval"],
        "attempts_each": [gain["hinted_attempts"], gain["unhinted_attempts"]],
        "gain_points": gain["gain_points"],
        "gain_interval_points": [gain["gain_low"], gain["gain_high"]],
        "teacher_kept": summary.teacher_kept,
        "kept_with_wrong_step": summary.kept_with_wrong_step,
        "kept_steps_checked": summary.kept_steps_checked,
        "note": gain["note"],
    }
    Path(config.output_dir, "teacher_gain.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    configure_logging()
    (config,) = TrlParser((PrepConfig,)).parse_args_and_config()
    r = teacher_gain(config)
    print(
        f"{r['output_dir']} ({r['teacher_hint']}): rollout accuracy {r['rollout_accuracy']:.1%}; on "
        f"{r['paired_questions']} questions hinted {r['hinted_accuracy']:.1%} vs unhinted {r['unhinted_accuracy']:.1%} "
        f"({r['attempts_each']} attempts): gain {r['gain_points']:+.1f} pts [{r['gain_interval_points'][0]:+.1f}, "
        f"{r['gain_interval_points'][1]:+.1f}]; kept answers with a wrong step: {r['kept_with_wrong_step']} of "
        f"{r['kept_steps_checked']} checked"
    )

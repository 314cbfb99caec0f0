"""Tokens a preparation run generated (rollouts + teacher attempts): the budget the GRPO anchor gets.

    python recipes/experiment/generation_budget.py outputs/experiment/data/round1 [--detail]

Counts every finished shard's records: rollout answers by their `num_tokens`, teacher attempts by their token ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssb_trl.jobs.workdir import read_jsonl
from ssb_trl.prepare.job import PrepareJob


def generated_tokens(output_dir: Path) -> dict[str, int]:
    work = PrepareJob.work_dir(str(output_dir))
    rollouts = teacher = questions = 0
    for shard in work.finished_shards("teacher"):
        for record in read_jsonl(work.shard_path("rollouts", shard)) or []:
            questions += 1
            rollouts += sum(r["num_tokens"] for r in record["rollouts"])
        for record in read_jsonl(work.shard_path("teacher", shard)) or []:
            teacher += sum(len(a["token_ids"]) for a in record["attempts"])
    if not questions:
        raise SystemExit(f"{output_dir} holds no finished shard: run the preparation first")
    return {"questions": questions, "rollout_tokens": rollouts, "teacher_tokens": teacher, "total": rollouts + teacher}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--detail", action="store_true", help="Print the counts as JSON, not only the total.")
    args = parser.parse_args()
    counts = generated_tokens(args.output_dir)
    print(json.dumps(counts) if args.detail else counts["total"])

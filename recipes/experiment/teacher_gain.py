"""Does the hint help? The hinted teacher's accuracy vs the same model unhinted, on the questions SSB pairs.

SSB assumes that the model, shown a right and a wrong attempt, answers better than it does alone. This measures it
on a finished (or partly finished) preparation folder: for every paired question it samples fresh unhinted answers
with the teacher's own sampling settings (the rollouts themselves are biased: a pair needs at least one right one)
and compares, question by question, the share of finished, correct answers with and without the hint.

    python recipes/experiment/teacher_gain.py --config recipes/experiment/configs/select_1digit.yaml \
        --output_dir outputs/experiment/select/1digit

Writes ``teacher_gain.json`` into the preparation folder and prints one line of figures.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from trl import TrlParser

from ssb_trl.data import PrepConfig, load_questions
from ssb_trl.data.engine import make_backend
from ssb_trl.data.grading import grade
from ssb_trl.data.prompts import student_messages
from ssb_trl.data.sampling import derive_seed
from ssb_trl.data.workdir import WorkDir, read_jsonl
from ssb_trl.eval.stats import wilson_interval
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts import configure_logging


def teacher_gain(config: PrepConfig) -> dict:
    questions = {q.id: q for q in load_questions(config)}
    work = WorkDir(config.output_dir)
    hinted: dict[str, list[bool]] = {}
    rollout_correct = rollout_total = 0
    for shard in work.finished_shards("teacher"):
        rollouts = {r["id"]: r for r in read_jsonl(work.shard_path("rollouts", shard)) or []}
        for record in read_jsonl(work.shard_path("teacher", shard)) or []:
            rollout_correct += sum(r["correct"] for r in rollouts[record["id"]]["rollouts"])
            rollout_total += len(rollouts[record["id"]]["rollouts"])
            if record["pair"] is not None:
                hinted[record["id"]] = [attempt["correct"] for attempt in record["attempts"]]
    if not hinted:
        raise ValueError(f"{config.output_dir} holds no paired question yet: run the preparation first")
    ids = sorted(hinted)
    model, tokenizer = load_model_and_tokenizer(config.model_name_or_path, dtype=config.dtype, device=config.device)
    backend = make_backend(
        config, model=model, tokenizer=tokenizer, model_name_or_path=config.model_name_or_path, dtype=config.dtype
    )
    sampling = config.teacher_sampling  # same temperature, top-k/p, length and number of attempts as the teacher
    prompts = [student_messages(questions[i].question, config.system_prompt) for i in ids]
    seeds = [derive_seed(config.seed, i, "unhinted-check") for i in ids]
    outputs = backend.generate(prompts, sampling, seed=seeds)
    backend.close()
    unhinted = {
        i: [c.finished and grade(c.text, questions[i], fallbacks=config.answer_fallbacks) for c in samples]
        for i, samples in zip(ids, outputs)
    }
    differences = [statistics.mean(hinted[i]) - statistics.mean(unhinted[i]) for i in ids]
    mean = statistics.mean(differences)
    half = 1.96 * statistics.stdev(differences) / math.sqrt(len(ids)) if len(ids) > 1 else float("inf")
    hinted_hits, unhinted_hits = sum(map(sum, hinted.values())), sum(map(sum, unhinted.values()))
    hinted_n, unhinted_n = sum(map(len, hinted.values())), sum(map(len, unhinted.values()))
    result = {
        "output_dir": config.output_dir,
        "questions_with_rollouts": rollout_total // max(config.num_rollouts, 1),
        "rollout_accuracy": rollout_correct / max(rollout_total, 1),
        "paired_questions": len(ids),
        "hinted_accuracy": hinted_hits / hinted_n,
        "hinted_interval": wilson_interval(hinted_hits, hinted_n),
        "unhinted_accuracy": unhinted_hits / unhinted_n,
        "unhinted_interval": wilson_interval(unhinted_hits, unhinted_n),
        "attempts_each": [hinted_n, unhinted_n],
        "gain_points": 100 * mean,
        "gain_interval_points": [100 * (mean - half), 100 * (mean + half)],
        "note": "accuracy = finished and graded correct; gain = mean over paired questions of (hinted - unhinted), "
        "95% normal interval over questions",
    }
    Path(config.output_dir, "teacher_gain.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    configure_logging()
    (config,) = TrlParser((PrepConfig,)).parse_args_and_config()
    r = teacher_gain(config)
    print(
        f"{r['output_dir']}: rollout accuracy {r['rollout_accuracy']:.1%}; on {r['paired_questions']} paired questions "
        f"hinted {r['hinted_accuracy']:.1%} vs unhinted {r['unhinted_accuracy']:.1%} ({r['attempts_each']} "
        f"attempts): gain {r['gain_points']:+.1f} pts [{r['gain_interval_points'][0]:+.1f}, "
        f"{r['gain_interval_points'][1]:+.1f}]"
    )

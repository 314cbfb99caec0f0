"""Experiment 3, stage 0: where does the hint's signal sit? Per-token KL(hinted || unhinted) on a preparation's texts.

For every question the hinted teacher was asked about, the same model is teacher-forced on the same tokens twice,
after the hinted prompt and after the student's prompt, and the KL between its two next-token distributions (T = 1,
full vocabulary) is taken at every answer position. Texts: the kept teacher answer, and every rollout (right, wrong,
cut short). Positions are classed, first match wins: end of turn; final answer (the tokens of the answer the grader
extracts, at its last occurrence); first tokens (the first 3); arithmetic (digits, operators, '=', brackets and
spaces only); other. Also the share of positions where the hinted model's top-1 token is the written token.

    python recipes/experiment/hint_kl.py outputs/experiment3/data/teacher_answers --output docs/experiment/diagnostic3_results.md
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ssb_trl.generation.sampling import derive_seed
from ssb_trl.jobs.rows import end_of_turn_id, with_end_of_turn
from ssb_trl.jobs.workdir import read_jsonl
from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.prepare.stages import choose_hint, teacher_prompt
from ssb_trl.storage import SETTINGS_FILENAME, WORK_DIRNAME
from ssb_trl.tasks.grading import extract_final_answer
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages, text_ids
from ssb_trl.tasks.sources import load_questions

CLASSES = ("end of turn", "final answer", "first tokens", "arithmetic", "other")
KINDS = ("teacher answer", "right rollout", "wrong rollout", "cut-short rollout")
_ARITHMETIC = re.compile(r"^[\d\s+\-*/×÷=().,]+$")


def recorded_config(folder: Path) -> PrepConfig:
    """The preparation's settings as its work folder recorded them (the hint by name, as run)."""
    recorded = json.loads((folder / WORK_DIRNAME / SETTINGS_FILENAME).read_text())["config"]
    known = {f.name for f in fields(PrepConfig)}
    return PrepConfig(**{k: v for k, v in recorded.items() if k in known})


def position_classes(tokenizer: Any, ids: list[int], text: str, end_of_turn: int, fallbacks: bool) -> list[str]:
    """The class of every answer position (see the module docstring)."""
    pieces = [tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
    ends = [len(p) for p in pieces]  # character end of each token in the decoded text
    answer = extract_final_answer(text, fallbacks=fallbacks)
    span = None
    if answer:
        start = text.rfind(answer)
        span = (start, start + len(answer)) if start >= 0 else None
    classes = []
    for i, token in enumerate(ids):
        begin, end = (ends[i - 1] if i else 0), ends[i]
        piece = text[begin:end]
        if token == end_of_turn:
            classes.append("end of turn")
        elif span is not None and begin < span[1] and end > span[0]:
            classes.append("final answer")
        elif i < 3:
            classes.append("first tokens")
        elif piece.strip() and _ARITHMETIC.match(piece):
            classes.append("arithmetic")
        else:
            classes.append("other")
    return classes


@torch.no_grad()
def answer_logprobs(model: Any, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """[len(answer), vocab] next-token log-probs (T = 1) at the answer's positions."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) + len(answer) - 1].float()
    return torch.log_softmax(logits, dim=-1)


def diagnose(folder: Path, model: Any, tokenizer: Any, limit: int | None = None) -> dict[str, Any]:
    """The per-token KL table of a preparation folder (its teacher stage recorded what each hint showed)."""
    config = recorded_config(folder)
    questions = {q.id: q for q in load_questions(config)}
    end_of_turn = end_of_turn_id(tokenizer)
    stop_ids = [end_of_turn, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])]
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0, 0])  # KL sum, tokens, top-1 agree
    texts = 0
    for path in sorted((folder / WORK_DIRNAME / "rollouts").glob("shard-*.jsonl")):
        teacher = {r["id"]: r for r in read_jsonl(folder / WORK_DIRNAME / "teacher" / path.name) or []}
        for record in read_jsonl(path) or []:
            question = questions[record["id"]]
            hint = (teacher.get(record["id"]) or {}).get("pair")
            if hint is None:  # as preparation chooses it (the same seeded draw), for folders without a teacher stage
                hint = choose_hint(
                    record["rollouts"], random.Random(derive_seed(config.seed, question.id, "pair")), config
                )
            if hint is None:
                continue
            hinted = chat_prompt_ids(tokenizer, teacher_prompt(question, record["rollouts"], hint, config))
            plain = chat_prompt_ids(tokenizer, student_messages(question.question, config.system_prompt))
            items = []
            kept = (teacher.get(record["id"]) or {}).get("kept_attempt")
            if kept is not None:
                attempt = teacher[record["id"]]["attempts"][kept]
                items.append(
                    ("teacher answer", attempt["text"], with_end_of_turn(attempt["token_ids"], end_of_turn, stop_ids))
                )
            for rollout in record["rollouts"]:
                ids = rollout.get("token_ids") or text_ids(tokenizer, rollout["text"])
                if rollout["finished"]:
                    ids = with_end_of_turn(ids, end_of_turn, stop_ids)
                kind = (
                    "cut-short rollout"
                    if not rollout["finished"]
                    else "right rollout"
                    if rollout["correct"]
                    else "wrong rollout"
                )
                items.append((kind, rollout["text"], list(ids)))
            for kind, text, ids in items:
                if not ids:
                    continue
                p, q = answer_logprobs(model, hinted, ids), answer_logprobs(model, plain, ids)
                kl = (p.exp() * (p - q)).sum(-1).clamp(min=0)
                agree = p.argmax(-1) == torch.tensor(ids)
                for cls, value, same in zip(
                    position_classes(tokenizer, ids, text, end_of_turn, config.answer_fallbacks),
                    kl.tolist(),
                    agree.tolist(),
                ):
                    cell = totals[(kind, cls)]
                    cell[0] += value
                    cell[1] += 1
                    cell[2] += int(same)
                texts += 1
                if limit is not None and texts >= limit:
                    return _table(totals, texts)
    return _table(totals, texts)


def _table(totals: dict[tuple[str, str], list[float]], texts: int) -> dict[str, Any]:
    rows = []
    for kind in KINDS:
        kind_kl = sum(totals[(kind, c)][0] for c in CLASSES if (kind, c) in totals)
        for cls in CLASSES:
            if (kind, cls) not in totals:
                continue
            kl, tokens, agree = totals[(kind, cls)]
            rows.append({
                "kind": kind, "class": cls, "tokens": int(tokens), "mean_kl": kl / tokens,
                "share_of_kind_kl": kl / kind_kl if kind_kl else 0.0, "hinted_top1_is_written": agree / tokens,
            })  # fmt: skip
    return {"texts": texts, "rows": rows}


def render(table: dict[str, Any]) -> str:
    lines = [
        f"KL(hinted || unhinted) per answer token, T = 1, full vocabulary; {table['texts']} texts.",
        "",
        "| text | position | tokens | mean KL (nats) | share of the text kind's KL | hinted top-1 = written |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['kind']} | {row['class']} | {row['tokens']} | {row['mean_kl']:.4f} | "
            f"{100 * row['share_of_kind_kl']:.1f}% | {100 * row['hinted_top1_is_written']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "folder", type=Path, help="A preparation folder (train_on teacher_answers) with its work files."
    )
    parser.add_argument("--output", type=Path, required=True, help="Markdown table to write (and .json beside it).")
    parser.add_argument("--limit", type=int, default=None, help="Stop after this many texts (a smoke run).")
    args = parser.parse_args()
    config = recorded_config(args.folder)
    model, tokenizer = load_model_and_tokenizer(config.model_name_or_path, dtype="float32", device="cpu")
    table = diagnose(args.folder, model.eval(), tokenizer, args.limit)
    args.output.write_text(render(table))
    args.output.with_suffix(".json").write_text(json.dumps(table, indent=2))
    print(render(table))


if __name__ == "__main__":
    main()

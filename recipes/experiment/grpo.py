"""GRPO anchor of the SSB experiment: TRL's `GRPOTrainer` on the same training questions, rewarded by the task's
scorer, stopped at a budget of generated tokens (the tokens SSB's data preparation generated, or a stated share).

The paper compares SSB with GRPO; this is that arm at the experiment's scale (docs/experiment/DESIGN.md). The reward
is the grader that prepares and evaluates SSB data (`ssb_trl.tasks.grading.grade`, answer fallbacks on), so all arms
are judged alike; LoRA settings are those of the SSB arms. Generation runs through TRL (transformers on CPU).

    python recipes/experiment/grpo.py --config recipes/experiment/configs/grpo.yaml \
        --task_config '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}' \
        --generation_token_budget 100000 --output_dir outputs/experiment/train/grpo-seed0

Writes the adapter, `grpo_budget.json` (tokens generated, steps, questions seen, wall time, reward by step) and
`grpo_questions.jsonl` (the questions it trained on, for `evaluate.py --exclude_questions_from`) to output_dir.
The run is not resumable mid-way (no checkpoints): an interrupted GRPO stage starts again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser, get_peft_config

from ssb_trl.models import load_model_and_tokenizer
from ssb_trl.scripts.common import configure_logging
from ssb_trl.storage import write_json
from ssb_trl.tasks import load_questions
from ssb_trl.tasks.grading import grade
from ssb_trl.tasks.prompts import DEFAULT_SYSTEM_PROMPT, student_messages
from ssb_trl.tasks.sources import QAExample, QuestionSource

logger = logging.getLogger("ssb_trl.experiment.grpo")


@dataclass
class GRPOExperimentArguments(QuestionSource):
    """The training questions (a question source, as in data preparation) and the generation budget."""

    generation_token_budget: int = field(
        default=0,
        metadata={"help": "Stop once this many completion tokens were generated (0 = no budget: max_steps/epochs)."},
    )
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "Student system prompt."})


class GenerationBudget(TrainerCallback):
    """Counts the completion tokens the reward sees (every completion passes through it once) and stops training
    at the end of the step that reaches the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.tokens = 0
        self.completions = 0
        self.questions: dict[str, str] = {}  # id -> question, in the order they were trained on

    def count(self, completion_ids: list[list[int]], examples: list[QAExample]) -> None:
        self.tokens += sum(len(ids) for ids in completion_ids)
        self.completions += len(completion_ids)
        self.questions.update((ex.id, ex.question) for ex in examples)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - TrainerCallback signature
        if self.budget and self.tokens >= self.budget:
            logger.info("Generation budget reached: %d tokens at step %d", self.tokens, state.global_step)
            control.should_training_stop = True
        return control


def question_dataset(source: QuestionSource, system_prompt: str) -> Dataset:
    """The training questions as GRPO prompts (the student's chat prompt), each with its example for the reward."""
    examples = load_questions(source)
    return Dataset.from_list(
        [
            {"prompt": student_messages(ex.question, system_prompt or None), "example": json.dumps(ex.to_dict())}
            for ex in examples
        ]
    )


def make_reward(budget: GenerationBudget, fallbacks: bool) -> Callable[..., list[float]]:
    """Reward 1.0 for a correct final answer (the evaluation's grader), else 0.0."""

    def correctness(
        completions: list, example: list[str], completion_ids: list[list[int]], **_: object
    ) -> list[float]:
        examples = [QAExample.from_dict(json.loads(e)) for e in example]
        budget.count(completion_ids, examples)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(grade(text, ex, fallbacks)) for text, ex in zip(texts, examples)]

    return correctness


def main(args: GRPOExperimentArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    """Train GRPO on the questions until the budget (or max_steps / the epochs) is spent; save what it used."""
    started = time.perf_counter()
    dataset = question_dataset(args, args.system_prompt)
    model, tokenizer = load_model_and_tokenizer(model_args.model_name_or_path, dtype=model_args.dtype, device="cpu")
    tokenizer.padding_side = "left"
    budget = GenerationBudget(args.generation_token_budget)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward(budget, args.answer_fallbacks),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[budget],
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    record = {
        "generated_tokens": budget.tokens,
        "completions": budget.completions,
        "generation_token_budget": args.generation_token_budget,
        "steps": trainer.state.global_step,
        "questions_seen": len(budget.questions),
        "training_questions": len(dataset),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mean_reward_by_step": [log["reward"] for log in trainer.state.log_history if "reward" in log],
    }
    output = Path(training_args.output_dir)
    with open(output / "grpo_questions.jsonl", "w") as file:
        file.writelines(json.dumps({"id": i, "question": q}) + "\n" for i, q in budget.questions.items())
    write_json(output / "grpo_budget.json", record)
    logger.info("GRPO done: %s", {k: v for k, v in record.items() if k != "mean_reward_by_step"})


if __name__ == "__main__":
    configure_logging()
    parser = TrlParser((GRPOExperimentArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())

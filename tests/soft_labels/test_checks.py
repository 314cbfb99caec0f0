"""Issue 17: the soft-label checks that need no model: the teacher's sampled answer tokens must be among its
top-K ids (soft labels shifted by a token were accepted), run by training, save_soft_label_dataset and
`ssb-trl inspect` alike; and `ssb-trl inspect` refuses, with the row and a nonzero exit, what training refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from ssb_trl import SSBConfig, SSBTrainer, tokenizer_fingerprint
from ssb_trl.generation.sampling import Sampling
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.soft_labels import extract_topk_soft_labels
from ssb_trl.soft_labels.checks import validate_soft_label_dataset
from ssb_trl.soft_labels.io import save_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelError, SoftLabelMetadata
from ssb_trl.tasks.prompts import chat_prompt_ids
from tests.helpers import build_soft_label_dataset, make_tiny_model

K = 8


def untied_teacher():
    """A tiny random teacher whose next-token ranking changes from token to token.

    With tied embeddings a tiny random model ranks alike at every position (each hidden state is close to its
    own input embedding), so soft labels moved by a token would still list the sampled tokens.
    """
    return make_tiny_model(seed=1, tie_word_embeddings=False)


def sampled_soft_label_dataset(tokenizer, sampling: Sampling, n_rows: int = 4):
    """Rows as `ssb-trl prepare` makes them: the teacher samples its answers (top-k), then is scored on them."""
    teacher = untied_teacher()
    backend = TransformersBackend(teacher, tokenizer, show_progress=False)
    prompts = [[{"role": "user", "content": f"What is {i} + {i + 1}?"}] for i in range(n_rows)]
    completions = backend.generate(prompts, sampling, seed=list(range(n_rows)))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sequences, starts = [], []
    for messages, (completion,) in zip(prompts, completions):
        prompt_ids = chat_prompt_ids(tokenizer, messages)
        answer = list(completion.token_ids)
        answer += [] if answer and answer[-1] == eos else [eos]  # as preparation closes the turn
        sequences.append(prompt_ids + answer)
        starts.append(len(prompt_ids))
    labels = extract_topk_soft_labels(
        teacher, sequences, starts, top_k=K, temperature=2.0, logprob_dtype="float32", show_progress=False
    )
    rows = [
        {
            "input_ids": sequence,
            "completion_mask": [0] * start + [1] * (len(sequence) - start),
            "teacher_topk_ids": ids.tolist(),
            "teacher_topk_logprobs": logprobs.tolist(),
        }
        for sequence, start, (ids, logprobs) in zip(sequences, starts, labels)
    ]
    metadata = SoftLabelMetadata(
        teacher_model="tiny-random-teacher",
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=K,
        temperature=2.0,
        source={"teacher_sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": 1.0}},
        logprob_dtype="float32",
    )
    dataset = datasets.Dataset.from_list(rows)
    dataset.info.description = metadata.to_description()
    return dataset, metadata


def shifted(dataset, row: int | None = None):
    """Soft labels moved one token later (row j gets row j + 1's labels; the last one repeated)."""
    rows = dataset.to_list()
    for i, example in enumerate(rows):
        if row is None or i == row:
            for column in ("teacher_topk_ids", "teacher_topk_logprobs"):
                example[column] = example[column][1:] + example[column][-1:]
    moved = datasets.Dataset.from_list(rows)
    moved.info.description = dataset.info.description
    return moved


SAMPLED = Sampling(temperature=1.0, top_k=4, max_new_tokens=12)


@pytest.fixture(scope="module")
def sampled(tokenizer_dir):
    from transformers import AutoTokenizer

    return sampled_soft_label_dataset(AutoTokenizer.from_pretrained(tokenizer_dir), SAMPLED)


def test_sampled_answers_pass_and_shifted_soft_labels_are_refused(sampled):
    dataset, metadata = sampled
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=49152)  # what extraction writes passes
    with pytest.raises(
        SoftLabelError,
        match=r"row 2: \d+ of its \d+ answer tokens \(\d+ of the dataset's \d+\) are not among the teacher's top-8 ",
    ) as e:
        validate_soft_label_dataset(shifted(dataset, row=2), metadata=metadata)
    assert "sampled them with top_k=4 (first: answer token 0, id" in str(e.value)
    assert "shifted by a token" in str(e.value) and "prompt_length + j - 1" in str(e.value)


def test_training_and_saving_refuse_shifted_soft_labels(sampled, tokenizer, tmp_path):
    dataset, metadata = sampled
    bad = shifted(dataset)
    with pytest.raises(SoftLabelError, match="row 0: .* not among the teacher's top-8"):
        SSBTrainer(
            make_tiny_model(seed=0),
            args=SSBConfig(str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_steps=1),
            train_dataset=bad,
            processing_class=tokenizer,
        )
    with pytest.raises(SoftLabelError, match="row 0: .* not among the teacher's top-8"):
        save_soft_label_dataset(bad, str(tmp_path / "saved"), metadata)
    assert not (tmp_path / "saved").exists()


def test_one_stray_token_is_tolerated(sampled):
    """Generation and scoring are two passes (often two engines): a near-tie can put one token just outside."""
    dataset, metadata = sampled
    rows = dataset.to_list()
    start = rows[1]["completion_mask"].index(1)
    ids = rows[1]["teacher_topk_ids"]
    rows[1]["input_ids"][start + 3] = next(t for t in range(100, 200) if t not in ids[3])
    one_off = datasets.Dataset.from_list(rows)
    validate_soft_label_dataset(one_off, metadata=metadata)


@pytest.mark.parametrize(
    "teacher_sampling",
    [{"temperature": 1.0, "top_k": 0}, {"temperature": 1.0, "top_k": 16}, {}, None],
    ids=["unrestricted", "top_k above K", "not recorded", "no source"],
)
def test_the_check_is_skipped_when_sampling_does_not_bound_the_tokens(sampled, teacher_sampling):
    dataset, metadata = sampled
    source = {} if teacher_sampling is None else {"teacher_sampling": teacher_sampling}
    other = SoftLabelMetadata.from_dict({**metadata.to_dict(), "source": source})
    validate_soft_label_dataset(shifted(dataset), metadata=other)


def test_greedy_teacher_answers_must_be_the_top_1(tokenizer):
    dataset, metadata = sampled_soft_label_dataset(tokenizer, Sampling(temperature=0.0, max_new_tokens=12), n_rows=2)
    validate_soft_label_dataset(dataset, metadata=metadata)
    with pytest.raises(SoftLabelError, match="row 0: .* sampled them with top_k=1"):
        validate_soft_label_dataset(shifted(dataset), metadata=metadata)


def test_rows_built_from_text_with_recorded_sampling_are_refused(tokenizer):
    """build_soft_label_dataset's rows are written answers, not the teacher's samples: metadata claiming top-k sampling lies."""
    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=2, top_k=K)
    claimed = SoftLabelMetadata.from_dict({**metadata.to_dict(), "source": {"teacher_sampling": {"top_k": 4}}})
    with pytest.raises(SoftLabelError, match="row 0: .* not among the teacher's top-8"):
        validate_soft_label_dataset(dataset, metadata=claimed)


def test_prepared_data_passes_and_its_shifted_copy_is_refused(tmp_path, tokenizer):
    """The real pipeline with teacher_top_k <= K: its rows pass; shifted by a token, even 2-token answers (one
    checked token each) are refused, over the dataset."""
    from ssb_trl.prepare import prepare_ssb_data
    from ssb_trl.soft_labels.io import load_soft_label_dataset
    from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS), teacher_top_k=3)
    prepare_ssb_data(config, model=make_digit_model(tokenizer), tokenizer=tokenizer, show_progress=False)
    dataset, metadata = load_soft_label_dataset(config.output_dir)
    assert metadata.source["teacher_sampling"]["top_k"] == 3 and metadata.top_k == 8
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    n = len(dataset)
    with pytest.raises(SoftLabelError, match=rf"row 0: 1 of its 1 answer tokens \({n} of the dataset's {n}\)"):
        validate_soft_label_dataset(shifted(dataset), metadata=metadata)


# ---- ssb-trl inspect runs the same checks ---------------------------------------------------------------------


def _inspect(folder: Path, tokenizer_dir: str, *extra: str) -> subprocess.CompletedProcess:
    argv = ["inspect", "--dataset_name", str(folder), "--tokenizer_name_or_path", tokenizer_dir, *extra]
    return subprocess.run([sys.executable, "-m", "ssb_trl", *argv], capture_output=True, text=True, timeout=300)


def _save_unchecked(dataset, folder: Path, metadata: SoftLabelMetadata) -> None:
    """Write a (broken) dataset as a folder, bypassing save_soft_label_dataset's own checks."""
    dataset.info.description = ""
    dataset.save_to_disk(str(folder))
    (folder / "ssb_metadata.json").write_text(json.dumps(metadata.to_dict()))


def _broken_datasets(dataset, metadata):
    rows = dataset.to_list()
    nan = [dict(r) for r in rows]
    nan[1]["teacher_topk_logprobs"] = [list(r) for r in nan[1]["teacher_topk_logprobs"]]
    nan[1]["teacher_topk_logprobs"][2][0] = float("nan")
    raw = [dict(r, teacher_topk_logprobs=[[v + 15 for v in t] for t in r["teacher_topk_logprobs"]]) for r in rows]
    mixed = [dict(r) for r in rows]
    mixed[2]["teacher_topk_ids"] = [t[:4] for t in mixed[2]["teacher_topk_ids"]]
    mixed[2]["teacher_topk_logprobs"] = [t[:4] for t in mixed[2]["teacher_topk_logprobs"]]
    cut = [dict(r) for r in rows]
    cut[3]["teacher_topk_ids"] = cut[3]["teacher_topk_ids"][:-1]
    cut[3]["teacher_topk_logprobs"] = cut[3]["teacher_topk_logprobs"][:-1]
    return {
        "nan": (datasets.Dataset.from_list(nan), "row 1: NaN or infinite teacher log-prob"),
        "raw logits": (datasets.Dataset.from_list(raw), "row 0: teacher top-K probability mass"),
        "mixed K": (datasets.Dataset.from_list(mixed), "row 2: expected K=8 soft-label entries per token, found 4"),
        "misaligned": (datasets.Dataset.from_list(cut), "row 3: .* answer tokens but"),
        "shifted": (shifted(dataset, row=1), "row 1: .* not among the teacher's top-8"),
        "empty": (dataset.select([]), "the soft-label dataset .* is empty: it was saved with no rows"),
    }


@pytest.mark.slow
def test_inspect_refuses_what_training_refuses(sampled, tmp_path, tokenizer_dir):
    """inspect used to print statistics of such data (or a raw traceback) and exit 0."""
    dataset, metadata = sampled
    for name, (broken, match) in _broken_datasets(dataset, metadata).items():
        folder = tmp_path / name.replace(" ", "_")
        _save_unchecked(broken, folder, metadata)
        proc = _inspect(folder, tokenizer_dir)
        assert proc.returncode == 1, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        last_line = proc.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"ssb-trl inspect: {folder} cannot be trained on: "), (name, last_line)
        assert re.search(match, last_line), (name, last_line)
        assert "Traceback" not in proc.stderr, name


def test_inspect_checks_the_tokenizer_and_passes_good_data(sampled, tmp_path, tokenizer_dir):
    from ssb_trl.scripts.inspect_data import InspectArguments, main

    dataset, metadata = sampled
    save_soft_label_dataset(dataset, str(tmp_path / "good"), metadata)
    stats = main(InspectArguments(dataset_name=str(tmp_path / "good"), tokenizer_name_or_path=tokenizer_dir))
    assert stats["rows"] == 4 and stats["top_k"] == K
    other = SoftLabelMetadata.from_dict(
        {**metadata.to_dict(), "tokenizer_fingerprint": {"vocab_size": 151665, "sha256": "0123456789abcdef"}}
    )
    _save_unchecked(dataset, tmp_path / "other", other)
    with pytest.raises(SystemExit, match=f"made with another tokenizer than '{tokenizer_dir}'"):
        main(InspectArguments(dataset_name=str(tmp_path / "other"), tokenizer_name_or_path=tokenizer_dir))
    with pytest.raises(SystemExit, match=r"--row 9 is outside the dataset \(rows 0..3\)"):
        main(InspectArguments(dataset_name=str(tmp_path / "good"), tokenizer_name_or_path=tokenizer_dir, row=9))

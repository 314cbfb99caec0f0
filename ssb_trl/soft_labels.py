"""The soft-label column format: extract top-K teacher log-probs, describe them, check them.

A soft-label dataset has one row per training example (see DESIGN.md):
  input_ids              student prompt + teacher answer (ending with the end-of-turn token)
  completion_mask        1 on answer tokens, 0 on the prompt
  teacher_topk_ids       [n_answer][K] int32, most probable first
  teacher_topk_logprobs  [n_answer][K] float16/32, log-probs over the full vocabulary at `temperature`
Row j of the soft labels is the teacher's distribution over answer token j. The tail bucket
log(1 - sum(exp(topk))) is derived, never stored. Dataset-level `SoftLabelMetadata` travels in
`Dataset.info.description` (kept by `save_to_disk`/`load_from_disk`) and in `ssb_metadata.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

METADATA_FILENAME = "ssb_metadata.json"
_METADATA_MARKER = "ssb_trl_soft_labels"
FORMAT_VERSION = 1
SOFT_LABEL_COLUMNS = ("input_ids", "completion_mask", "teacher_topk_ids", "teacher_topk_logprobs")
# fp16 rounding of K log-probs can push their mass a little above 1; beyond this it is a broken row.
MASS_TOLERANCE = 1e-2


class SoftLabelError(ValueError):
    """A soft-label dataset breaks the contract; the message names the row and the fix."""


@dataclass
class SoftLabelMetadata:
    """How a soft-label dataset was made; checked at train time."""

    teacher_model: str
    tokenizer_fingerprint: dict
    top_k: int
    temperature: float
    prompt_template_version: str = "unknown"
    source: dict = field(default_factory=dict)
    logprob_dtype: str = "float16"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SoftLabelMetadata:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_description(self) -> str:
        return json.dumps({_METADATA_MARKER: self.to_dict()}, sort_keys=True)

    @classmethod
    def from_description(cls, description: str | None) -> SoftLabelMetadata | None:
        """Parse metadata from `Dataset.info.description`; None if it holds none."""
        if not description:
            return None
        try:
            data = json.loads(description)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or _METADATA_MARKER not in data:
            return None
        return cls.from_dict(data[_METADATA_MARKER])


def tokenizer_fingerprint(tokenizer) -> dict:
    """Vocabulary size plus a hash of the token -> id map: two tokenizers that agree here encode alike."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    return {"vocab_size": len(vocab), "sha256": digest.hexdigest()[:16]}


def _validate_extraction_inputs(sequences: list[list[int]], answer_starts: list[int]) -> None:
    if len(sequences) != len(answer_starts):
        raise ValueError(f"{len(sequences)} sequences but {len(answer_starts)} answer starts.")
    for i, (seq, start) in enumerate(zip(sequences, answer_starts)):
        if not 1 <= start < len(seq):
            raise ValueError(
                f"sequence {i}: answer start {start} must be within [1, {len(seq) - 1}] "
                "(the answer needs a prompt before it and at least one token)."
            )


@torch.no_grad()
def extract_topk_soft_labels(
    model: torch.nn.Module,
    sequences: list[list[int]],
    answer_starts: list[int],
    top_k: int = 64,
    temperature: float = 2.0,
    batch_size: int = 8,
    logprob_dtype: str = "float16",
    show_progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced top-K log-probs on the answer span of each sequence.

    Row j of a result is the distribution over answer token j (`sequence[answer_start + j]`), read
    from the logits at position `answer_start + j - 1`, at `temperature`, normalised over the whole
    vocabulary. Only answer positions are projected to the vocabulary, and top-K runs on the model's
    device, so memory stays at [batch tokens, hidden] plus one [answer tokens, vocab] slice per sequence.
    Sequences are processed longest first in right-padded batches.

    Returns, per sequence (input order): (ids int32 [n_answer, K], logprobs [n_answer, K] in `logprob_dtype`).
    """
    _validate_extraction_inputs(sequences, answer_starts)
    if logprob_dtype not in ("float16", "float32"):
        raise ValueError(f"logprob_dtype must be 'float16' or 'float32', got {logprob_dtype!r}.")
    lm_head = model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, {vocab}] (the vocabulary size), got {top_k}.")
    device = lm_head.weight.device
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = backbone.base_model
    pad_id = 0
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(sequences)
    was_training = model.training
    model.eval()
    for lo in tqdm(range(0, len(order), batch_size), desc="Soft labels", disable=not show_progress, unit="batch"):
        idx = order[lo : lo + batch_size]
        width = len(sequences[idx[0]])
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            attention[row, : len(sequences[i])] = 1
        hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
        for row, i in enumerate(idx):
            start, end = answer_starts[i], len(sequences[i])
            h = hidden[row, start - 1 : end - 1]
            logits = lm_head(h).float() / temperature
            logprobs = torch.log_softmax(logits, dim=-1)
            values, ids = logprobs.topk(top_k, dim=-1)
            results[i] = (
                ids.to(torch.int32).cpu().numpy(),
                values.to(getattr(torch, logprob_dtype)).cpu().numpy(),
            )
    model.train(was_training)
    return results  # type: ignore[return-value]


def save_soft_label_dataset(dataset, output_dir: str, metadata: SoftLabelMetadata) -> None:
    """Save with `save_to_disk`, the metadata in the dataset info and beside it as JSON."""
    validate_soft_label_dataset(dataset, metadata=metadata)
    dataset.info.description = metadata.to_description()
    dataset.save_to_disk(output_dir)
    tmp = os.path.join(output_dir, METADATA_FILENAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(metadata.to_dict(), f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(output_dir, METADATA_FILENAME))


def push_soft_label_dataset_to_hub(dataset, repo_id: str, metadata: SoftLabelMetadata, **kwargs) -> None:
    """Push to the Hub with the metadata JSON beside the data. Untested here (no network)."""
    from huggingface_hub import HfApi

    dataset.info.description = metadata.to_description()
    dataset.push_to_hub(repo_id, **kwargs)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(metadata.to_dict(), indent=2).encode(),
        path_in_repo=METADATA_FILENAME,
        repo_id=repo_id,
        repo_type="dataset",
    )


def load_soft_label_dataset(name_or_path: str, split: str = "train"):
    """Load a soft-label dataset from a `save_to_disk` directory or the Hub, with its metadata.

    Returns (dataset, metadata); raises `SoftLabelError` if no metadata can be found.
    """
    import datasets

    if os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_info.json")):
        dataset = datasets.load_from_disk(name_or_path)
        meta_path = os.path.join(name_or_path, METADATA_FILENAME)
    elif os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_dict.json")):
        dataset = datasets.load_from_disk(name_or_path)[split]
        meta_path = os.path.join(name_or_path, METADATA_FILENAME)
    else:
        dataset = datasets.load_dataset(name_or_path, split=split)
        meta_path = None
        try:
            from huggingface_hub import hf_hub_download

            meta_path = hf_hub_download(name_or_path, METADATA_FILENAME, repo_type="dataset")
        except Exception as error:  # noqa: BLE001 - any failure means "no file"; reported below if info lacks it too
            logger.debug("no %s for %s: %s", METADATA_FILENAME, name_or_path, error)
    metadata = SoftLabelMetadata.from_description(dataset.info.description)
    if metadata is None and meta_path and os.path.exists(meta_path):
        with open(meta_path) as f:
            metadata = SoftLabelMetadata.from_dict(json.load(f))
    if metadata is None:
        raise SoftLabelError(
            f"{name_or_path!r} has no soft-label metadata (neither in its dataset info nor in {METADATA_FILENAME}). "
            "Make it with `recipes/prepare_ssb_data.py` / `ssb_trl.save_soft_label_dataset`, or add the file."
        )
    dataset.info.description = metadata.to_description()
    return dataset, metadata


def _row_error(row: int, problem: str, fix: str) -> SoftLabelError:
    return SoftLabelError(f"soft-label dataset row {row}: {problem}. {fix}")


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def check_soft_label_columns(
    dataset, columns: tuple[str, str] = ("teacher_topk_ids", "teacher_topk_logprobs")
) -> None:
    """The cheap checks first: the dataset is not empty and has the token and soft-label columns."""
    if len(dataset) == 0:
        raise SoftLabelError("the soft-label dataset is empty: data preparation kept no example. Nothing to train on.")
    missing = [c for c in ("input_ids", "completion_mask", *columns) if c not in dataset.column_names]
    if missing:
        raise SoftLabelError(
            f"the dataset lacks the soft-label column(s) {missing} (it has {dataset.column_names}). "
            "SSBTrainer trains on soft labels made by `recipes/prepare_ssb_data.py`; for plain SFT use "
            "trl.SFTTrainer, or set soft_label_ids_column/soft_label_logprobs_column to your column names."
        )


def validate_soft_label_dataset(
    dataset,
    metadata: SoftLabelMetadata | None = None,
    vocab_size: int | None = None,
    columns: tuple[str, str] = ("teacher_topk_ids", "teacher_topk_logprobs"),
    check_mass: bool = True,
) -> None:
    """Refuse a dataset that breaks the column contract, naming the first bad row and the fix.

    Vectorised over Arrow buffers, so a large dataset is checked in seconds.
    """
    ids_col, logp_col = columns
    check_soft_label_columns(dataset, columns)
    table = dataset.with_format("arrow")[:]
    if not isinstance(table, pa.Table):  # pragma: no cover - older datasets
        table = pa.Table.from_pydict(table)

    def col(name):
        return table.column(name).combine_chunks()

    input_len = pc.list_value_length(col("input_ids")).to_numpy(zero_copy_only=False)
    mask = col("completion_mask")
    mask_len = pc.list_value_length(mask).to_numpy(zero_copy_only=False)
    bad = input_len != mask_len
    if bad.any():
        i = _first(bad)
        raise _row_error(i, f"input_ids has {input_len[i]} tokens but completion_mask {mask_len[i]}", "Rebuild it.")
    mask_values = pc.list_flatten(mask).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(mask_len)])
    n_answer = np.add.reduceat(mask_values, offsets[:-1]) if len(mask_values) else np.zeros(len(mask_len), np.int64)
    n_answer = np.where(mask_len > 0, n_answer, 0)
    # The answer must be one contiguous span after a non-empty prompt: that is how positions line up.
    answer_start = mask_len - n_answer
    tail_sums = np.array([mask_values[o + s : o + m].sum() for o, s, m in zip(offsets[:-1], answer_start, mask_len)])
    bad = (n_answer == 0) | (answer_start < 1) | (tail_sums != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            "completion_mask must be 0 on a non-empty prompt, then 1 on every answer token to the end "
            f"(got {n_answer[i]} answer tokens of {mask_len[i]})",
            "Check how the row was built; the answer must follow the prompt.",
        )
    ids = col(ids_col)
    logp = col(logp_col)
    ids_rows = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    logp_rows = pc.list_value_length(logp).to_numpy(zero_copy_only=False)
    bad = (ids_rows != n_answer) | (logp_rows != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            f"{n_answer[i]} answer tokens but {ids_rows[i]} rows of {ids_col} and {logp_rows[i]} of {logp_col}",
            "Soft labels must have one row per answer token; the row was truncated or built with another tokenizer. "
            "Rebuild the dataset (do not truncate input_ids alone).",
        )
    ids_inner, logp_inner = pc.list_flatten(ids), pc.list_flatten(logp)
    k_ids = pc.list_value_length(ids_inner).to_numpy(zero_copy_only=False)
    k_logp = pc.list_value_length(logp_inner).to_numpy(zero_copy_only=False)
    token_row = np.repeat(np.arange(len(ids_rows)), ids_rows)
    k = int(metadata.top_k) if metadata is not None else int(k_ids[0])
    bad = (k_ids != k) | (k_logp != k)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, f"expected K={k} soft-label entries per token, found {k_ids[bad][0]}", "Rebuild it.")
    flat_ids = pc.list_flatten(ids_inner).to_numpy(zero_copy_only=False).reshape(-1, k)
    flat_logp = pc.list_flatten(logp_inner).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)
    if vocab_size is not None:
        bad = ((flat_ids < 0) | (flat_ids >= vocab_size)).any(-1)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher token id outside the model's vocabulary [0, {vocab_size})",
                "The soft labels were made with another tokenizer/model; rebuild them with this one.",
            )
    bad = ~np.isfinite(flat_logp).all(-1)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, "NaN or infinite teacher log-prob", "Rebuild the row; the teacher pass overflowed.")
    if check_mass:
        mass = np.exp(flat_logp.astype(np.float64)).sum(-1)
        bad = (flat_logp > 1e-3).any(-1) | (mass > 1.0 + MASS_TOLERANCE)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher top-K probability mass {mass[bad][0]:.4f} exceeds 1 (log-probs must be normalised over "
                "the full vocabulary)",
                "Store log_softmax(logits / T) values, not raw logits.",
            )


def check_metadata_compatible(
    metadata: SoftLabelMetadata,
    tokenizer,
    temperature: float,
    allow_temperature_renormalization: bool = False,
) -> None:
    """Refuse soft labels made with another tokenizer or at another temperature than configured."""
    if metadata.format_version > FORMAT_VERSION:
        raise SoftLabelError(
            f"soft-label format version {metadata.format_version} is newer than this ssb-trl understands "
            f"({FORMAT_VERSION}); upgrade ssb-trl."
        )
    expected = tokenizer_fingerprint(tokenizer)
    if metadata.tokenizer_fingerprint != expected:
        raise SoftLabelError(
            f"the soft labels were made with another tokenizer (dataset: {metadata.tokenizer_fingerprint}, "
            f"this tokenizer: {expected}; teacher {metadata.teacher_model!r}). Train the model the data was made "
            "for, or rebuild the soft labels with this model's tokenizer."
        )
    if abs(metadata.temperature - temperature) > 1e-6 and not allow_temperature_renormalization:
        raise SoftLabelError(
            f"the soft labels were taken at temperature {metadata.temperature} but SSBConfig.temperature is "
            f"{temperature}. Set temperature={metadata.temperature}, rebuild the soft labels at {temperature}, or set "
            "allow_temperature_renormalization=True to rescale them over the top-K ids (drops the tail bucket)."
        )

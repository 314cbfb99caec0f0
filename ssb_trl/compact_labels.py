"""Compact soft labels (format version 2): token ids in the fewest bytes the vocabulary allows, log-probs as
8-bit codes with a fixed step.

Why: with int32 ids and float16 log-probs the top-K costs 6 bytes per entry, two thirds of it ids, though a
vocabulary of 49,152 needs 16 bits. The compact format stores

  teacher_topk_ids       [n_answer][K] uint16 when the vocabulary has <= 65,536 ids, else uint32
  teacher_topk_logprobs  [n_answer][K] uint8 codes c: log-prob = -c * LOGPROB_CODE_STEP (0 .. -15.94 nats)

both as fixed-size inner lists (no per-token offsets), so an entry costs 3 bytes (5 above 65,536 ids).

Each log-prob is rounded to the nearest code: its probability is off by at most a factor exp(1/32) (3.2%),
rounding keeps the order (most probable first), and log-probs below -15.94 (probability < 1.2e-7) are stored
as -15.94. The tail bucket is derived from the codes as in version 1, so it absorbs the rounding of the top-K
mass (at most 3.2% of that mass, usually far less since the errors of K entries partly cancel).
`benchmarks/bench_fidelity.py` measures what this costs the gradient against the dense loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the format module (and ssb_trl.contract, which imports it) does not need torch
    import torch

LOGPROB_CODE_DTYPE = "uint8"
LOGPROB_CODE_STEP = 1.0 / 16.0
"""Nats per code step: 8 bits cover log-probs 0 .. -15.94 (probabilities down to 1.2e-7)."""
MAX_LOGPROB_CODE = 255
COMPACT_FORMAT_VERSION = 2


def id_dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest unsigned integer dtype that holds every id of a vocabulary."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}.")
    return "uint16" if vocab_size <= 2**16 else "uint32"


def encode_logprobs(logprobs: np.ndarray, round_up: bool = False) -> np.ndarray:
    """[..., K] log-probs, most probable first, normalised over the full vocabulary -> uint8 codes [..., K].

    Each log-prob goes to the nearest code, or with `round_up` to the code just above it (probability rounded up,
    by at most a factor exp(1/16)): sampled soft labels (`ssb_trl.sampled_labels`) sum to 1 and must keep a mass
    >= 1 so that no rounding lands in the derived tail bucket; the loss scales the excess back to 1.
    """
    values = np.asarray(logprobs, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("logprobs hold NaN or infinite values; the teacher pass overflowed.")
    if (values > 1e-3).any():
        raise ValueError("logprobs must be <= 0 (log_softmax over the full vocabulary), not raw logits.")
    codes = np.floor(-values / LOGPROB_CODE_STEP + 1e-9) if round_up else np.rint(-values / LOGPROB_CODE_STEP)
    return np.clip(codes, 0, MAX_LOGPROB_CODE).astype(np.uint8)


def decode_logprobs(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 log-probs (-code * LOGPROB_CODE_STEP)."""
    return np.asarray(codes, dtype=np.float32) * np.float32(-LOGPROB_CODE_STEP)


def decode_logprobs_tensor(values: torch.Tensor) -> torch.Tensor:
    """Float log-probs pass through as float32; integer tensors are compact codes and are decoded."""
    if values.is_floating_point():
        return values.float()
    return values.float() * -LOGPROB_CODE_STEP


def compact_soft_label_rows(
    ids: np.ndarray, logprobs: np.ndarray, vocab_size: int, round_up: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One row's float soft labels [n_answer, K] -> (ids in the vocabulary's id dtype, uint8 codes).

    `round_up`: see :func:`encode_logprobs` (sampled soft labels)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"teacher ids must lie in [0, {vocab_size}) (the vocabulary), got {ids.min()}..{ids.max()}.")
    return ids.astype(id_dtype_for_vocab(vocab_size)), encode_logprobs(logprobs, round_up=round_up)


def compact_soft_label_dataset(dataset, metadata, vocab_size: int):
    """A float (format version 1) soft-label dataset -> the same rows in the compact format, with its metadata.

    Shrinks an existing dataset without a new teacher pass: `compact, meta = compact_soft_label_dataset(dataset,
    metadata, len(tokenizer))`, then `save_soft_label_dataset(compact, DATA_DIR, meta)`. `vocab_size` is the
    teacher's vocabulary (it picks the id dtype). Returns (datasets.Dataset, SoftLabelMetadata).
    """
    import dataclasses

    from .contract import TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS, features

    if metadata.logprob_dtype == LOGPROB_CODE_DTYPE:
        return dataset, metadata
    compact = features(LOGPROB_CODE_DTYPE, vocab_size=vocab_size, top_k=metadata.top_k)

    def convert(row):
        ids, codes = compact_soft_label_rows(
            np.asarray(row[TEACHER_TOPK_IDS]), np.asarray(row[TEACHER_TOPK_LOGPROBS], dtype=np.float32), vocab_size
        )
        return {TEACHER_TOPK_IDS: ids.tolist(), TEACHER_TOPK_LOGPROBS: codes.tolist()}

    row_features = dataset.features.copy()
    row_features[TEACHER_TOPK_IDS] = compact[TEACHER_TOPK_IDS]
    row_features[TEACHER_TOPK_LOGPROBS] = compact[TEACHER_TOPK_LOGPROBS]
    converted = dataset.map(convert, features=row_features, desc="Compacting soft labels")
    new_metadata = dataclasses.replace(metadata, logprob_dtype=LOGPROB_CODE_DTYPE)
    converted.info.description = new_metadata.to_description()
    return converted, new_metadata

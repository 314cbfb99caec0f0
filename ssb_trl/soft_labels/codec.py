"""How soft labels are stored: float log-probs, compact 8-bit codes, or sampled draws; one encoder, one decoder.

Three stored forms share one pair of columns (ids, log-probs) of K entries per answer token:

* **float** (format version 1): int32 ids, float16/float32 log-probs over the full vocabulary, most probable first.
* **compact** (version 2, ``logprob_dtype="uint8"``): ids as uint16 when the vocabulary has <= 65,536 ids (else
  uint32) and log-probs as 8-bit codes c with log-prob = -c * LOGPROB_CODE_STEP (0 .. -15.94 nats), both in
  fixed-size lists: 3 bytes per entry instead of 6. Rounding to the nearest code keeps the order and changes a
  probability by at most a factor exp(1/32) (3.2%); the derived tail bucket absorbs the rounding of the mass.
* **sampled** (version 3, ``soft_label_mode="sampled"``): Sparse Logit Sampling (Anshumann et al., ACL 2025,
  arXiv 2503.16870). N draws per position from the teacher's distribution p at T, stored as the distinct drawn
  ids by count with log(count / N), then padding ids at PAD_LOGPROB. E[p_hat] = p and the forward-KL gradient
  q - p_hat is linear in p_hat, so its expectation is the dense gradient q - p: an unbiased target, where top-K
  drops the tail's shape. Their stored mass is 1, so no rounding may leak into the tail: compact codes of a
  sampled row round every probability up (mass >= 1) and the loss scales a mass above 1 back to 1.

Whether stored log-probs are codes is decided by one rule, :func:`is_compact`, from whatever describes them (the
metadata's dtype name, an Arrow or numpy type, a torch dtype). :func:`encode_soft_labels` is the one encoder (it
refuses non-finite log-probs and ones the stored dtype cannot hold); :func:`decode_logprobs` the one decoder.
`benchmarks/bench_fidelity.py` measures what each form costs the gradient against the dense loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the format (and its checks) must not need torch to import
    import torch

LOGPROB_CODE_DTYPE = "uint8"
LOGPROB_DTYPES = ("float16", "float32", LOGPROB_CODE_DTYPE)
"""float16/float32: log-probs as floats (format version 1); uint8: compact 8-bit codes (version 2)."""
SOFT_LABEL_MODES = ("topk", "sampled")
"""topk: the K most probable ids per token; sampled: N draws from the teacher's distribution (unbiased)."""
LOGPROB_CODE_STEP = 1.0 / 16.0
"""Nats per code step: 8 bits cover log-probs 0 .. -15.94 (probabilities down to 1.2e-7)."""
MAX_LOGPROB_CODE = 255
COMPACT_FORMAT_VERSION = 2
PAD_LOGPROB = -80.0
"""Log-prob of the padding entries of a sampled row (tokens not drawn): finite for the checks, nil in the loss."""


def is_compact(dtype: Any) -> bool:
    """Are log-probs stored as 8-bit codes? ``dtype``: a dtype name ("uint8"), a numpy, Arrow or torch dtype.

    Codes are the only integer form of log-probs; float16/float32 (and bfloat16 in memory) are log-probs."""
    name = str(dtype).removeprefix("torch.").lower()
    return name.startswith(("uint", "int"))


def id_dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest unsigned integer dtype that holds every id of a vocabulary."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}.")
    return "uint16" if vocab_size <= 2**16 else "uint32"


def encode_logprobs(logprobs: np.ndarray, round_up: bool = False) -> np.ndarray:
    """[..., K] log-probs, most probable first, normalised over the full vocabulary -> uint8 codes [..., K].

    Each log-prob goes to the nearest code, or with `round_up` to the code just above it (probability rounded up,
    by at most a factor exp(1/16)): sampled soft labels sum to 1 and must keep a mass >= 1 so that no rounding
    lands in the derived tail bucket.
    """
    values = np.asarray(logprobs, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("logprobs hold NaN or infinite values; the teacher pass overflowed.")
    if (values > 1e-3).any():
        raise ValueError("logprobs must be <= 0 (log_softmax over the full vocabulary), not raw logits.")
    codes = np.floor(-values / LOGPROB_CODE_STEP + 1e-9) if round_up else np.rint(-values / LOGPROB_CODE_STEP)
    return np.clip(codes, 0, MAX_LOGPROB_CODE).astype(np.uint8)


def decode_logprobs(values: np.ndarray) -> np.ndarray:
    """Stored log-probs -> float32 log-probs: float values pass through, compact codes are decoded."""
    values = np.asarray(values)
    if is_compact(values.dtype):
        return values.astype(np.float32) * np.float32(-LOGPROB_CODE_STEP)
    return values.astype(np.float32)


def decode_logprobs_tensor(values: torch.Tensor) -> torch.Tensor:
    """The same for a tensor (the collator): float32 log-probs."""
    if is_compact(values.dtype):
        return values.float() * -LOGPROB_CODE_STEP
    return values.float()


class NonFiniteLogprobs(ValueError):
    """A teacher's log-probs hold NaN or infinite values, or ones the stored dtype cannot hold."""


def encode_soft_labels(
    ids: np.ndarray, logprobs: np.ndarray, logprob_dtype: str, vocab_size: int, sampled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One row's float32 soft labels [n_answer, K] -> the stored (ids, log-probs) in ``logprob_dtype``.

    The one encoder of every job. It refuses (:class:`NonFiniteLogprobs`; the caller names the row) log-probs that
    are NaN or infinite (the teacher's logits overflowed) and float16 ones that fall below float16's range (a tiny
    temperature: log-probs of -1e5 are -inf in float16), rather than store a row the checks would refuse after
    the whole run. Compact codes round up for sampled rows (see the module docstring).
    """
    ids, logprobs = np.asarray(ids), np.asarray(logprobs, dtype=np.float32)
    finite = np.isfinite(logprobs).all(-1)
    if not finite.all():
        raise NonFiniteLogprobs(
            f"the teacher's log-probs are NaN or infinite on {int((~finite).sum())} of the {len(finite)} answer "
            f"tokens (first: token {int(np.argmin(finite))}); its logits overflowed. Run the teacher in float32 "
            "(--dtype float32) or check its weights"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"teacher ids must lie in [0, {vocab_size}) (the vocabulary), got {ids.min()}..{ids.max()}.")
    if is_compact(logprob_dtype):
        return ids.astype(id_dtype_for_vocab(vocab_size)), encode_logprobs(logprobs, round_up=sampled)
    stored = logprobs.astype(logprob_dtype)
    if not np.isfinite(stored).all():
        low = float(logprobs[~np.isfinite(stored)].min())
        raise NonFiniteLogprobs(
            f"a teacher log-prob of {low:.3g} does not fit {logprob_dtype} (its range ends at "
            f"{float(np.finfo(logprob_dtype).min):.3g}): the soft-label temperature is too small for the logits. "
            "Store --logprob_dtype float32 (or uint8, which clips at -15.94), or use a larger "
            "--soft_label_temperature"
        )
    return ids.astype(np.int32), stored


def sample_soft_labels(
    logprobs: torch.Tensor, num_draws: int, top_k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] teacher log-probs at T -> (ids [n, top_k] long, log-probs [n, top_k] float32) of N draws each.

    `top_k` must be >= `num_draws` so that every drawn token is kept (dropping one would bias the estimate).
    """
    import torch

    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}.")
    if not num_draws <= top_k <= logprobs.shape[-1]:
        raise ValueError(
            f"top_k must lie in [num_draws, vocabulary] = [{num_draws}, {logprobs.shape[-1]}], got {top_k}: "
            "every drawn token must be stored, or the estimate is biased."
        )
    probs = logprobs.float().exp()
    draws = torch.multinomial(probs, num_draws, replacement=True, generator=generator)
    counts = torch.zeros_like(probs).scatter_add_(-1, draws, torch.ones_like(draws, dtype=probs.dtype))
    values, ids = counts.topk(top_k, dim=-1)  # drawn tokens by count, then distinct never-drawn ids
    stored = torch.where(values > 0, (values / num_draws).log(), torch.full_like(values, PAD_LOGPROB))
    return ids, stored

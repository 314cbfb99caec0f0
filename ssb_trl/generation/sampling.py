"""Sampling settings and seeded sampling: one :class:`Sampling` for rollouts, teacher answers and evaluation.

Every sequence draws its randomness from its own seed through a counter-based RNG (:func:`counter_uniform`),
so a sequence's sample does not depend on which other sequences share its batch, on the batch size, or on
how work is split across processes: the data pipeline relies on this to resume and to shard without
changing results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ssb_trl.validation import require_valid_numbers


@dataclass(frozen=True)
class Sampling:
    """How to sample answers: ``temperature`` 0 is greedy decoding (then ``n`` copies of one answer).

    This is a *sampling* temperature; ``SSBConfig.temperature`` is the distillation temperature, a
    different thing. Config files name these fields with a prefix (``rollout_temperature``,
    ``teacher_top_k``, ``sampling_top_p`` ...).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 512
    n: int = 1

    def __post_init__(self) -> None:
        require_valid_numbers(self)
        if self.n < 1:
            raise ValueError(f"the number of samples must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"need top_k >= 0 (0 = off) and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts (unlike ``hash()``, identical across processes)."""
    digest = hashlib.sha256("\x1f".join(repr(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32, in int64 without overflow (c split into 16-bit halves)."""
    return ((x * (c & 0xFFFF)) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser: a bijective mix with full avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniform(seeds: torch.Tensor, step: int, k: int) -> torch.Tensor:
    """Uniform (0, 1) noise [rows, k] that depends only on (row seed, step, column): a counter-based RNG.

    Computed on the seeds' device in a few vectorised integer ops, so sampling needs no per-row
    generator, no host loop and no host-to-device copy per decoding step.
    """
    lo, hi = seeds & _M32, (seeds >> 32) & _M32
    counter = (torch.arange(k, device=seeds.device) + ((step * 0x9E3779B9) & _M32)) & _M32
    h = _fmix32(_fmix32(counter.unsqueeze(0) ^ lo.unsqueeze(1)) ^ hi.unsqueeze(1))
    return (h.double() + 0.5) / 2.0**32


def sample_next_tokens(
    logits: torch.Tensor, seeds: torch.Tensor, step: int, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """One token per row [rows] drawn from temperature / top-k / top-p filtered ``logits`` [rows, vocab].

    Gumbel-max over the top-k/top-p candidates (exact sampling from the filtered softmax) with noise from
    :func:`counter_uniform`, so a row's token depends only on its logits, its seed and ``step`` (the number of
    tokens the row has generated so far): rows may join or leave a batch without changing anyone's samples.
    """
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k and top_k > 0 else vocab
    values, indices = logits.topk(k, dim=-1)  # sorted, largest first
    if top_p < 1.0:
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        values = values.masked_fill(mass_before >= top_p, float("-inf"))
    noise = counter_uniform(seeds.to(values.device), step, k)
    gumbel = -torch.log(-torch.log(noise)).to(values.dtype)
    choice = (values + gumbel).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, choice).squeeze(-1)

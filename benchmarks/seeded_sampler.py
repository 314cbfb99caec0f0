"""A reference for the generation tests and bench_teacher: ssb-trl's seeded sampling as a logits processor, so that
``model.generate`` (greedy) draws the same tokens as the transformers backend's own loop. Not part of the library:
the backend calls :func:`ssb_trl.generation.sampling.sample_next_tokens` directly."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from ssb_trl.generation.sampling import sample_next_tokens


class SeededSampler(LogitsProcessor):
    """:func:`sample_next_tokens` as a logits processor, for ``model.generate`` with greedy decoding.

    It draws the next token itself and returns scores where only that token is finite, so the greedy
    step picks it. (The transformers backend calls :func:`sample_next_tokens` directly.)
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.seeds = torch.tensor(seeds, dtype=torch.long)
        self.step = 0
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.seeds.device != scores.device:
            self.seeds = self.seeds.to(scores.device)  # once, not every step
        tokens = sample_next_tokens(scores, self.seeds, self.step, self.temperature, self.top_k, self.top_p)
        self.step += 1
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, tokens.unsqueeze(-1), 0.0)

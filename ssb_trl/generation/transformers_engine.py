"""The transformers backend of the generation interface (:mod:`ssb_trl.generation.base`): batched, seeded per
sequence, one prefill per distinct prompt, a KV cache written in place (:mod:`ssb_trl.generation.kv_cache`)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ssb_trl.generation.base import (
    Completion,
    GenerationBackend,
    GenerationStats,
    completion_from_ids,
    eos_token_ids,
    prompt_seeds,
)
from ssb_trl.generation.kv_cache import reserved_cache
from ssb_trl.generation.sampling import Sampling, derive_seed, sample_next_tokens
from ssb_trl.tasks.prompts import Messages, chat_prompt_ids

logger = logging.getLogger(__name__)


class TransformersBackend(GenerationBackend):
    """Batched generation with any transformers causal LM on any device: left padding, length-sorted batches.

    Each (prompt, sample) pair is one row; rows are sorted by prompt length (longest first, so memory
    problems show up at once) and cut into batches of at most ``max_batch_size`` rows and
    ``max_batch_tokens`` padded tokens (prompt + new tokens). Each batch runs its own decoding loop (one
    prefill of each distinct prompt, its KV cache then shared by that prompt's samples, then one forward
    pass per new token on a KV cache written in place, see :mod:`ssb_trl.generation.kv_cache`) in which **a row
    leaves the batch as soon as it ends its turn**: ``model.generate`` keeps computing finished rows until
    the longest one stops, so a batch of long hinted teacher prompts with one answer that runs to
    ``max_new_tokens`` paid for every row to the end. Sampling draws each row's token from its own seed
    and step (see :mod:`ssb_trl.generation.sampling`), so rows leaving does not change anyone's samples. With a
    greedy ``sampling`` (temperature 0) each prompt is generated once, its completion repeated
    ``sampling.n`` times. Sampling settings come only from the call: the model's own generation-config defaults (e.g. a
    repetition penalty) are deliberately not applied. ``last_stats`` holds what the last call did.
    """

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        show_progress: bool = True,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with ssb_trl.models.load_model_and_tokenizer")
        for name, value in (
            ("generation_batch_size", max_batch_size),
            ("generation_max_batch_tokens", max_batch_tokens),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the default), got {value}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size  # None: chosen per call from free GPU memory (64 on CPU)
        self.max_batch_tokens = max_batch_tokens
        self.show_progress = show_progress
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.last_stats = GenerationStats()
        parameters = inspect.signature(model.forward).parameters
        # transformers >= 5.2x names the KV cache argument `cache` (`past_key_values` is deprecated there).
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def auto_batch_size(self, sequence_length: int, memory_fraction: float = 0.5, cap: int = 1024) -> int:
        """Rows per batch: on CUDA as many as the KV cache of `sequence_length` tokens fits in half the free
        memory (time per decoding step barely grows with the batch, so bigger is faster); 64 elsewhere."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        if self.model.device.type != "cuda":
            return 64
        config = self.model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize
        # Per row and step, the sampler also holds a few fp32 rows of logits.
        bytes_per_row = bytes_per_token * sequence_length + 4 * 4 * config.vocab_size
        free, _ = torch.cuda.mem_get_info(self.model.device)
        return int(max(1, min(cap, free * memory_fraction // bytes_per_row)))

    def settings(self) -> dict[str, Any]:
        """Backend, device, dtype and batch limits (``max_batch_size`` "auto" on CUDA: from free memory)."""
        auto = "auto (free GPU memory, up to 1024)" if self.model.device.type == "cuda" else 64
        return {
            "backend": self.name,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "max_batch_size": auto if self.max_batch_size is None else self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
        }

    def _batches(self, rows: list[tuple[int, int]], lengths: list[int], max_new_tokens: int) -> list[list[int]]:
        max_batch_size = self.auto_batch_size(max(lengths) + max_new_tokens)
        order = sorted(range(len(rows)), key=lambda r: (-lengths[rows[r][0]], r))
        batches: list[list[int]] = []
        current: list[int] = []
        for row in order:
            width = max([lengths[rows[r][0]] for r in current] + [lengths[rows[row][0]]]) + max_new_tokens
            too_many_tokens = self.max_batch_tokens is not None and width * (len(current) + 1) > self.max_batch_tokens
            if current and (len(current) >= max_batch_size or too_many_tokens):
                batches.append(current)
                current = []
            current.append(row)
        if current:
            batches.append(current)
        return batches

    def _completion(self, ids: list[int]) -> Completion:
        eos = set(self.eos_ids)
        for position, token in enumerate(ids):
            if token in eos:
                return completion_from_ids(self.tokenizer, ids[: position + 1], True)
        pad = self.tokenizer.pad_token_id
        while ids and ids[-1] == pad:  # only reachable if pad is not an eos id and a row stopped early
            ids = ids[:-1]
        return completion_from_ids(self.tokenizer, ids, False)

    def _new_cache(self, capacity: int) -> DynamicCache:
        """The KV cache of one batch: room for ``capacity`` positions, each step written in place."""
        return reserved_cache(self.model.config, capacity)

    def _decode_batch(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        row_seeds: list[int] | None,
        sampling: Sampling,
        prompt_of_row: list[int],
    ) -> list[list[int]]:
        """Generate for one batch; returns each row's new ids (up to and including its end of turn).

        ``input_ids``/``attention`` hold the batch's distinct prompts, left-padded; row ``i`` continues prompt
        ``prompt_of_row[i]``. Each prompt is prefilled once and its KV cache and last logits copied to its rows
        (the samples of one prompt share the same prompt tokens); then one forward pass per step over the rows
        still going: finished rows are dropped from the batch, the KV cache and the mask, so their compute
        stops with them.
        """
        model, device = self.model, self.model.device
        eos = torch.tensor(self.eos_ids, device=device)
        seeds = None if row_seeds is None else torch.tensor(row_seeds, dtype=torch.long, device=device)
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache(input_ids.shape[1] + sampling.max_new_tokens)
        started = time.perf_counter()
        logits = model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: cache},
            **self._last_logits_only,
        ).logits[:, -1]
        if prompt_of_row != list(range(input_ids.shape[0])):
            expand = torch.tensor(prompt_of_row, dtype=torch.long, device=device)
            cache.batch_select_indices(expand)
            logits, attention, positions = logits[expand], attention[expand], positions[expand]
        self._sync()
        self.last_stats.prefill_seconds += time.perf_counter() - started
        started = time.perf_counter()
        generated: list[list[int]] = [[] for _ in prompt_of_row]
        active = list(range(len(prompt_of_row)))  # batch position -> row
        next_positions = positions[:, -1:] + 1
        for step in range(sampling.max_new_tokens):
            if seeds is None:
                tokens = logits.argmax(dim=-1)
            else:
                tokens = sample_next_tokens(logits, seeds, step, sampling.temperature, sampling.top_k, sampling.top_p)
            self.last_stats.decode_row_steps += len(active)
            for row, token in zip(active, tokens.tolist()):
                generated[row].append(token)
            if step == sampling.max_new_tokens - 1:
                break
            going = ~torch.isin(tokens, eos)
            if not bool(going.all()):
                keep = going.nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                kept = keep.tolist()
                active = [active[i] for i in kept]
                tokens, attention, next_positions = tokens[keep], attention[keep], next_positions[keep]
                seeds = None if seeds is None else seeds[keep]
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
            logits = model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=attention,
                position_ids=next_positions,
                use_cache=True,
                **{self._cache_argument: cache},
            ).logits[:, -1]
            next_positions = next_positions + 1
        self._sync()
        self.last_stats.decode_seconds += time.perf_counter() - started
        return generated

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        greedy = sampling.greedy
        seeds = prompt_seeds(seed, len(prompts))
        encoded = [chat_prompt_ids(self.tokenizer, messages) for messages in prompts]
        lengths = [len(ids) for ids in encoded]
        samples_to_run = 1 if greedy else sampling.n
        rows = [(p, s) for p in range(len(prompts)) for s in range(samples_to_run)]
        results: dict[tuple[int, int], Completion] = {}
        pad = self.tokenizer.pad_token_id
        batches = self._batches(rows, lengths, sampling.max_new_tokens)
        stats = self.last_stats = GenerationStats(
            device=str(self.model.device),
            dtype=str(self.model.dtype).removeprefix("torch."),
            max_batch_size=self.auto_batch_size(max(lengths) + sampling.max_new_tokens),
            max_batch_tokens=self.max_batch_tokens,
            batches=len(batches),
            sequences=len(rows),
        )
        progress = tqdm(total=len(rows), desc="Generating", unit="seq", disable=not self.show_progress)
        for batch in batches:
            width = max(lengths[rows[r][0]] for r in batch)
            distinct = list(dict.fromkeys(rows[r][0] for r in batch))  # the batch's prompts, each prefilled once
            input_ids = torch.full((len(distinct), width), pad, dtype=torch.long)
            attention = torch.zeros((len(distinct), width), dtype=torch.long)
            for i, p in enumerate(distinct):
                ids = encoded[p]
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
                stats.prefill_tokens += len(ids)
            stats.prompt_tokens += sum(lengths[rows[r][0]] for r in batch)
            stats.padded_prompt_tokens += width * len(batch)
            prompt_of_row = [distinct.index(rows[r][0]) for r in batch]
            row_seeds = None if greedy else [derive_seed(seeds[rows[r][0]], rows[r][1]) for r in batch]
            generated = self._decode_batch(input_ids, attention, row_seeds, sampling, prompt_of_row)
            for i, r in enumerate(batch):
                completion = self._completion(generated[i])
                results[rows[r]] = completion
                stats.new_tokens += len(completion.token_ids)
                stats.hit_limit += not completion.finished
            progress.update(len(batch))
            progress.set_postfix(new_tok_per_s=f"{stats.new_tokens / max(stats.seconds, 1e-9):.0f}")
        progress.close()
        logger.info("Generated %s", stats.describe())
        return [[results[(p, 0 if greedy else s)] for s in range(sampling.n)] for p in range(len(prompts))]

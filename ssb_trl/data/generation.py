"""Generation backends: many chat prompts x many samples, batched, reproducible.

All backends share one call::

    backend.generate(prompts, sampling, seed) -> list (one per prompt) of list (one per sample) of Completion

``sampling`` is a :class:`~ssb_trl.data.sampling.Sampling` (``sampling.n`` samples per prompt); ``seed``
is either one int (prompt i then gets ``derive_seed(seed, i)``) or one seed per prompt. In the
transformers backend every sequence draws its randomness from its own seed, seeded from its prompt's
seed and its sample index (see :mod:`ssb_trl.data.sampling`), so results do not depend on batching or on
how work is split across processes. (Batched float arithmetic can still differ in the last bits between
batch shapes; on a given machine and batch layout the output is bit-for-bit repeatable.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from ssb_trl.data.prompts import Messages, chat_prompt_ids
from ssb_trl.data.sampling import Sampling, SeededSampler, derive_seed
from ssb_trl.models import resolve_model_path

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    """One generated answer.

    ``token_ids`` are exactly the generated ids: no padding, and the end-of-turn/eos token included when
    the model produced it (``finished=True``); ``finished=False`` means ``max_new_tokens`` cut it short.
    """

    text: str
    token_ids: list[int]
    finished: bool


def _prompt_seeds(seed: int | Sequence[int], num_prompts: int) -> list[int]:
    if isinstance(seed, int):
        return [derive_seed(seed, index) for index in range(num_prompts)]
    seeds = [int(value) for value in seed]
    if len(seeds) != num_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {num_prompts} prompts; pass one int or one seed per prompt")
    return seeds


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """All ids that end a turn: the generation config's eos id(s) plus the tokenizer's eos token."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.extend(config_eos if isinstance(config_eos, list) else [config_eos])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer define an eos token")
    return list(dict.fromkeys(int(i) for i in ids))


class GenerationBackend:
    """Interface shared by the backends (see the module docstring)."""

    tokenizer: Any

    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        raise NotImplementedError


class TransformersBackend(GenerationBackend):
    """Batched ``model.generate`` on any device: left padding, length-sorted batches, all samples at once.

    Each (prompt, sample) pair is one row; rows are sorted by prompt length (longest first, so memory
    problems show up at once) and cut into batches of at most ``max_batch_size`` rows and
    ``max_batch_tokens`` padded tokens (prompt + new tokens). With a greedy ``sampling`` (temperature 0)
    each prompt is generated once, its completion repeated ``sampling.n`` times. Sampling settings
    come only from the call: the model's own generation-config defaults (e.g. a repetition penalty) are
    deliberately not applied.
    """

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
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size  # None: chosen per call from free GPU memory (64 on CPU)
        self.max_batch_tokens = max_batch_tokens
        self.show_progress = show_progress
        self.eos_ids = eos_token_ids(model, tokenizer)

    def auto_batch_size(self, sequence_length: int, memory_fraction: float = 0.5, cap: int = 1024) -> int:
        """Rows per batch: on CUDA as many as the KV cache of `sequence_length` tokens fits in half the free
        memory (generate's time per step barely grows with the batch, so bigger is faster); 64 elsewhere."""
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
                kept = ids[: position + 1]
                return Completion(self.tokenizer.decode(kept, skip_special_tokens=True), kept, True)
        pad = self.tokenizer.pad_token_id
        while ids and ids[-1] == pad:  # only reachable if pad is not an eos id and a row stopped early
            ids = ids[:-1]
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids, False)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        greedy, max_new_tokens = sampling.greedy, sampling.max_new_tokens
        prompt_seeds = _prompt_seeds(seed, len(prompts))
        encoded = [chat_prompt_ids(self.tokenizer, messages) for messages in prompts]
        lengths = [len(ids) for ids in encoded]
        samples_to_run = 1 if greedy else sampling.n
        rows = [(p, s) for p in range(len(prompts)) for s in range(samples_to_run)]
        results: dict[tuple[int, int], Completion] = {}
        device = self.model.device
        pad = self.tokenizer.pad_token_id
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            use_cache=True,
        )
        progress = tqdm(total=len(rows), desc="Generating", unit="seq", disable=not self.show_progress)
        new_tokens, started = 0, time.perf_counter()
        for batch in self._batches(rows, lengths, max_new_tokens):
            width = max(lengths[rows[r][0]] for r in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids = encoded[rows[r][0]]
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
            processors = LogitsProcessorList()
            if not greedy:
                seeds = [derive_seed(prompt_seeds[rows[r][0]], rows[r][1]) for r in batch]
                processors.append(SeededSampler(seeds, sampling.temperature, sampling.top_k, sampling.top_p))
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                logits_processor=processors,
            )
            generated = output[:, width:].tolist()
            for i, r in enumerate(batch):
                completion = self._completion(generated[i])
                results[rows[r]] = completion
                new_tokens += len(completion.token_ids)
            progress.update(len(batch))
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(new_tok_per_s=f"{new_tokens / elapsed:.0f}")
        progress.close()
        return [[results[(p, 0 if greedy else s)] for s in range(sampling.n)] for p in range(len(prompts))]


class VLLMBackend(GenerationBackend):
    """vLLM engine behind the same interface. UNTESTED in this project: vLLM is not installed where the
    test suite runs, so its tests skip. Used only when ``import vllm`` works.

    Per-prompt seeds go to vLLM's per-request ``SamplingParams.seed``; vLLM's results are reproducible
    for a fixed seed but differ from the transformers backend's for the same seed.
    """

    def __init__(self, model_name_or_path: str, tokenizer: Any, **engine_kwargs: Any):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("the vLLM backend needs vLLM: pip install vllm (GPU machines only)") from exc
        self.tokenizer = tokenizer
        self.llm = LLM(model=resolve_model_path(model_name_or_path), **engine_kwargs)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_ids = list(dict.fromkeys(eos))

    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_seeds = _prompt_seeds(seed, len(prompts))
        inputs = [TokensPrompt(prompt_token_ids=chat_prompt_ids(self.tokenizer, m)) for m in prompts]
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=prompt_seed % (2**31),
                skip_special_tokens=True,
            )
            for prompt_seed in prompt_seeds
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=True)
        results = []
        for output in outputs:
            completions = []
            for sample in output.outputs:
                ids = list(sample.token_ids)
                finished = sample.finish_reason == "stop"
                if (
                    finished
                    and sample.stop_reason is None
                    and self.eos_ids
                    and (not ids or ids[-1] not in self.eos_ids)
                ):
                    ids.append(self.eos_ids[0])  # vLLM may drop the eos id; the pipeline needs it kept
                completions.append(Completion(sample.text, ids, finished))
            results.append(completions)
        return results


def vllm_available() -> bool:
    """True when vLLM can be imported (and so :class:`VLLMBackend` can be used)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(
    kind: str = "transformers",
    model: Any = None,
    tokenizer: Any = None,
    model_name_or_path: str | None = None,
    max_batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    show_progress: bool = True,
    **vllm_kwargs: Any,
) -> GenerationBackend:
    """Build a backend: ``"transformers"`` (default, CPU or GPU), ``"vllm"``, or ``"auto"`` (vLLM when
    importable and a GPU is present, else transformers)."""
    if kind == "auto":
        kind = "vllm" if vllm_available() and torch.cuda.is_available() and model_name_or_path else "transformers"
        logger.info("Generation backend: %s", kind)
    if kind == "transformers":
        if model is None or tokenizer is None:
            raise ValueError("the transformers backend needs a loaded model and tokenizer")
        return TransformersBackend(model, tokenizer, max_batch_size, max_batch_tokens, show_progress)
    if kind == "vllm":
        if not vllm_available():
            raise ImportError(
                "generation_backend='vllm' but vLLM is not installed; pip install vllm, or use 'transformers'"
            )
        if model_name_or_path is None or tokenizer is None:
            raise ValueError("the vLLM backend needs model_name_or_path and a tokenizer")
        return VLLMBackend(model_name_or_path, tokenizer, **vllm_kwargs)
    raise ValueError(f"unknown generation backend {kind!r}; use 'transformers', 'vllm' or 'auto'")


def count_tokens_per_second(completions: list[list[Completion]], seconds: float) -> float:
    """New tokens per second over a generate() result (for benchmarks and logs)."""
    total = sum(len(c.token_ids) for per_prompt in completions for c in per_prompt)
    return total / seconds if seconds > 0 and not math.isclose(seconds, 0.0) else float("nan")

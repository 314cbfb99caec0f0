"""The generation interface: many chat prompts x many samples, batched, reproducible; its completions and statistics.

All backends (:mod:`ssb_trl.generation.transformers_engine`, :mod:`ssb_trl.generation.vllm_engine`,
:mod:`ssb_trl.generation.server`) share one call::

    backend.generate(prompts, sampling, seed) -> list (one per prompt) of list (one per sample) of Completion

``sampling`` is a :class:`~ssb_trl.generation.sampling.Sampling` (``sampling.n`` samples per prompt); ``seed``
is either one int (prompt i then gets ``derive_seed(seed, i)``) or one seed per prompt. In the
transformers backend every sequence draws its randomness from its own seed, seeded from its prompt's
seed and its sample index (see :mod:`ssb_trl.generation.sampling`), so results do not depend on batching or on
how work is split across processes. (Batched float arithmetic can still differ in the last bits between
batch shapes; on a given machine and batch layout the output is bit-for-bit repeatable.)
:mod:`ssb_trl.generation.engine` picks a backend from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from transformers import GenerationConfig

from ssb_trl.generation.sampling import Sampling, derive_seed
from ssb_trl.models import resolve_model_path
from ssb_trl.tasks.prompts import Messages

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


def prompt_seeds(seed: int | Sequence[int], num_prompts: int) -> list[int]:
    """One seed per prompt: ``derive_seed(seed, i)`` from one int, or the given per-prompt seeds (checked)."""
    if isinstance(seed, int):
        return [derive_seed(seed, index) for index in range(num_prompts)]
    seeds = [int(value) for value in seed]
    if len(seeds) != num_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {num_prompts} prompts; pass one int or one seed per prompt")
    return seeds


def eos_token_ids(model: Any, tokenizer: Any, model_name_or_path: str | None = None) -> list[int]:
    """All ids that end a turn: the model's generation-config eos id(s) plus the tokenizer's eos token. Without a
    loaded ``model`` (a teacher that only vLLM runs), its generation config is read from ``model_name_or_path``."""
    generation_config = getattr(model, "generation_config", None)
    if model is None and model_name_or_path is not None:
        generation_config = generation_config_of(resolve_model_path(model_name_or_path))
    return eos_ids_of(getattr(generation_config, "eos_token_id", None), tokenizer)


def generation_config_of(path: str) -> GenerationConfig | None:
    """The generation config in a model folder (or Hub id), None when it has none."""
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def eos_ids_of(config_eos: int | list[int] | None, tokenizer: Any) -> list[int]:
    """``config_eos`` (a generation config's eos id or ids) plus the tokenizer's eos id, without repeats."""
    ids: list[int] = []
    if config_eos is not None:
        ids.extend(config_eos if isinstance(config_eos, list) else [config_eos])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer define an eos token")
    return list(dict.fromkeys(int(i) for i in ids))


def completion_from_ids(tokenizer: Any, ids: list[int], finished: bool) -> Completion:
    """A :class:`Completion` whose text is decoded from its ids, so text and ids always agree in every backend."""
    return Completion(tokenizer.decode(ids, skip_special_tokens=True), ids, finished)


def engine_completion(
    tokenizer: Any, ids: list[int], finished: bool, eos_ids: list[int], stop_reason: Any
) -> Completion:
    """A completion from an engine that says why it stopped (vLLM, a server): if it stopped at an end-of-turn id it
    left out of the ids, that id (``stop_reason`` when it is one, else the first eos id) is put back, because the
    pipeline trains the student to end its turn."""
    ids = list(ids)
    if finished and (not ids or ids[-1] not in eos_ids):
        ids.append(stop_reason if isinstance(stop_reason, int) else eos_ids[0])
    return completion_from_ids(tokenizer, ids, finished)


class GenerationBackend:
    """Interface shared by the backends (see the module docstring)."""

    tokenizer: Any
    eos_ids: list[int]
    name: str = "base"

    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the backend holds (an engine, connections); a no-op where there is nothing to free."""

    def settings(self) -> dict[str, Any]:
        """What generation runs with (for logs and run summaries)."""
        return {"backend": self.name}


@dataclass
class GenerationStats:
    """What one ``generate`` call of the transformers backend did: its settings and where the time went."""

    device: str = ""
    dtype: str = ""
    max_batch_size: int = 0
    max_batch_tokens: int | None = None
    batches: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    prefill_tokens: int = 0
    new_tokens: int = 0
    decode_row_steps: int = 0
    hit_limit: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    def plus(self, other: GenerationStats) -> GenerationStats:
        """Both calls' counts and times added up (settings from ``other``, the later call): for a stage's total."""
        added = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("device", "dtype", "max_batch_size", "max_batch_tokens")
        }
        return replace(other, **added)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def padding_share(self) -> float:
        """Share of the prefill's prompt positions that were padding."""
        return 1 - self.prompt_tokens / self.padded_prompt_tokens if self.padded_prompt_tokens else 0.0

    def describe(self) -> str:
        limit = "" if self.max_batch_tokens is None else f", at most {self.max_batch_tokens} tokens"
        return (
            f"{self.sequences} sequences on {self.device} ({self.dtype}) in {self.batches} batch(es) of at most "
            f"{self.max_batch_size} rows{limit}: {self.new_tokens} new tokens in {self.seconds:.1f} s "
            f"({self.tokens_per_second:.0f}/s; prefill {self.prefill_seconds:.1f} s, decode {self.decode_seconds:.1f} s), "
            f"{self.padding_share:.0%} prompt padding, {self.prefill_tokens} of {self.prompt_tokens} prompt tokens "
            f"prefilled, {self.hit_limit} cut at max_new_tokens"
        )

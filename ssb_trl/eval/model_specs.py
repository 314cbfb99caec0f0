"""The models an evaluation compares: `--models` entries -> specs (labels, PEFT adapters), checks, loading."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import AutoConfig

from ssb_trl.models import check_model_available, load_model_and_tokenizer, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?$")
_ENTRY_FORM = (
    "write 'label=name_or_path' (a label of letters, digits and _ . + -, one '=', then the model) or just the model"
)


def _split_entry(entry: str) -> tuple[str | None, str]:
    """A ``--models`` entry as (label or None, model); an entry that is neither form is refused, saying why."""
    if "=" not in entry or Path(entry).expanduser().exists():
        return None, entry
    label, target = entry.split("=", 1)
    if not label:
        raise ValueError(f"--models entry {entry!r} has an empty label: {_ENTRY_FORM}")
    if not target.strip():
        raise ValueError(f"--models entry {entry!r} names no model after '=': {_ENTRY_FORM}")
    if not _LABEL_RE.match(label):
        raise ValueError(
            f"--models entry {entry!r}: the label {label!r} may hold only letters, digits and _ . + -; {_ENTRY_FORM}"
        )
    if "=" in target and not Path(target).expanduser().exists():
        raise ValueError(f"--models entry {entry!r} has more than one '=' (and is no existing path); {_ENTRY_FORM}")
    return label, target


@dataclass
class ModelSpec:
    """A model to evaluate: its table label, what the user passed, and (for PEFT adapters) the base it sits on."""

    label: str
    name_or_path: str
    adapter_base: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.adapter_base is not None


def _default_label(name_or_path: str) -> str:
    path = Path(name_or_path)
    if path.exists():
        return path.resolve().name
    return name_or_path.rstrip("/").split("/")[-1].split(":")[-1]


def parse_model_specs(models: Sequence[str], adapter_base_model: str | None = None) -> list[ModelSpec]:
    """Turn `--models` entries into specs, detecting PEFT adapter dirs; fails fast on bad entries, before loading.

    An entry may be `label=name_or_path`. A local directory holding `adapter_config.json` is an adapter: its base
    is `adapter_base_model` if given, else the adapter's recorded `base_model_name_or_path`.
    """
    if not models:
        raise ValueError("No models to evaluate: pass --models, e.g. --models bundled:smollm2-135m-instruct out/ssb")
    specs: list[ModelSpec] = []
    for entry in models:
        label, target = _split_entry(entry)
        path = Path(target).expanduser()
        adapter_base = None
        if path.exists():
            target = str(path)
            if path.is_dir() and (path / "adapter_config.json").is_file():
                with open(path / "adapter_config.json", encoding="utf-8") as f:
                    adapter_cfg = json.load(f)
                adapter_base = adapter_base_model or adapter_cfg.get("base_model_name_or_path")
                if not adapter_base:
                    raise ValueError(
                        f"Adapter {path} does not record its base model (base_model_name_or_path is empty): "
                        "pass --adapter_base_model NAME_OR_PATH."
                    )
            elif path.is_dir() and not (path / "config.json").is_file():
                raise ValueError(
                    f"{path} is a directory but holds neither config.json (a saved model) nor adapter_config.json "
                    "(a PEFT adapter); point --models at the saved model or adapter directory."
                )
            elif path.is_file():
                raise ValueError(
                    f"{path} is a file; --models takes model directories, adapter directories or Hub ids."
                )
        elif target.startswith((".", "/", "~")) or target.count("/") > 1:
            raise FileNotFoundError(f"Model path {target!r} does not exist (and is not a Hub id like 'org/name').")
        elif not target.startswith("bundled:") and not _HUB_ID_RE.match(target):
            raise ValueError(
                f"--models entry {entry!r}: {target!r} is neither an existing local path nor a Hub id like 'org/name' "
                f"(letters, digits and _ . - only); {_ENTRY_FORM}"
            )
        specs.append(ModelSpec(label or _default_label(target), target, adapter_base))
    labels = [s.label for s in specs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"Duplicate model labels {duplicates}: name them with 'label=path' entries in --models.")
    return specs


def context_length(name_or_path: str) -> int | None:
    """The most positions a model's config says it handles (``max_position_embeddings``), or None if unstated."""
    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_models_loadable(specs: Sequence[ModelSpec], max_new_tokens: int | None = None) -> None:
    """Read each model's config (cheap) so that an unreachable model, or an answer length beyond its context
    window, fails before any model is evaluated."""
    for spec in specs:
        for name in [spec.adapter_base] if spec.is_adapter else [spec.name_or_path]:
            try:
                check_model_available(name)
                limit = context_length(name) if max_new_tokens is not None else None
            except Exception as exc:  # any loading failure: re-raised with the fix
                role = f"base model of adapter {spec.name_or_path!r}" if spec.is_adapter else "model"
                fix = " For an adapter, --adapter_base_model overrides the recorded base." if spec.is_adapter else ""
                raise ValueError(
                    f"Cannot load the config of {role} {name!r} (for {spec.label!r}): {type(exc).__name__}: {exc}. "
                    "Pass an existing local directory, or a Hub id with network access (unset HF_HUB_OFFLINE) or "
                    f"already in the local cache.{fix}"
                ) from exc
            if limit is not None and max_new_tokens > limit:
                raise ValueError(
                    f"max_new_tokens={max_new_tokens} is more than model {name!r} (for {spec.label!r}) can hold: its "
                    f"context window is {limit} positions, prompt included. Pass --max_new_tokens below {limit}."
                )


def load_eval_model(spec: ModelSpec, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """Load a model for generation; a PEFT adapter is loaded on its base and merged (same outputs, faster decoding)."""
    if not spec.is_adapter:
        return load_model_and_tokenizer(spec.name_or_path, dtype=dtype, device=device)
    logger.info("Loading adapter %s on base model %s", spec.name_or_path, spec.adapter_base)
    model, tokenizer = load_model_and_tokenizer(spec.adapter_base, dtype=dtype, device=device)
    adapter_dir = Path(spec.name_or_path)
    if (adapter_dir / "tokenizer_config.json").is_file():
        # The trainer saves its processing class next to the adapter; prefer it (same vocab, maybe a new pad token).
        tokenizer = load_tokenizer(str(adapter_dir))
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, tokenizer


def model_dir_for_engine(spec: ModelSpec, scratch_dir: str, dtype: str = "auto") -> tuple[str, Any]:
    """A model directory an engine such as vLLM can load, and the tokenizer: the model itself, or for a PEFT
    adapter its base with the adapter merged in, saved under ``scratch_dir`` (same weights as :func:`load_eval_model`
    evaluates)."""
    if not spec.is_adapter:
        return spec.name_or_path, load_tokenizer(spec.name_or_path)
    target = Path(scratch_dir) / f"{spec.label}-merged"
    tokenizer = save_merged_model(spec, target, dtype=dtype)
    logger.info("Merged adapter %s into its base; saved for the engine in %s", spec.name_or_path, target)
    return str(target), tokenizer


def save_merged_model(spec: ModelSpec, target: Path, dtype: str = "auto") -> Any:
    """Save the adapter ``spec`` merged into its base (as :func:`load_eval_model` evaluates it) with its tokenizer
    at ``target``; returns the tokenizer. Written to ``<target>.partial`` and renamed, so an interrupted save
    leaves no half-written model that a later run would take for a finished one."""
    model, tokenizer = load_eval_model(spec, dtype=dtype, device="cpu")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return tokenizer

"""Finished models of an evaluation, kept one file per model, so a rerun reuses them and never mixes settings.

Each model's result (metrics and graded per-question records) is written to ``<output_dir>/models/<label>.json``
as soon as the model finishes, with what determines it: the run's settings (:func:`run_settings`: the questions'
digest, decoding, grading, prompt, dtype and engine) and the model's identity (:func:`model_identity`). A rerun
into the same folder reuses every model whose file matches, evaluates the others (a model added to ``--models``
is the only one evaluated), and writes the merged results.json / results.md. Files (or an older results.json)
computed with other settings are refused before any model runs, naming what differs, unless ``--overwrite``
says to evaluate those models again and replace them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ssb_trl.eval.config import EvalConfig
from ssb_trl.eval.model_specs import ModelSpec
from ssb_trl.storage import write_json
from ssb_trl.tasks.prompts import PROMPT_TEMPLATE_VERSION
from ssb_trl.tasks.sources import QAExample

logger = logging.getLogger(__name__)

MODELS_DIRNAME = "models"
RESULTS_FILENAME = "results.json"
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


class EvaluationResultsConflict(ValueError):
    """output_dir holds results computed with other settings: reusing or replacing them must be asked for."""


def questions_digest(examples: Sequence[QAExample]) -> str:
    """sha256 of the evaluated questions in order (ids, texts and gold answers): any change means other figures."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.id, ex.question, ex.answer], ensure_ascii=False).encode())
    return digest.hexdigest()


def run_settings(config: EvalConfig, examples: Sequence[QAExample], generation_backend: str) -> dict[str, Any]:
    """The settings every model's result depends on (the same for all models of a run).

    Batch size and device are left out: they do not change what is computed (up to floating-point round-off in
    padded batches). The sampling fields count only when there are samples.
    """
    settings: dict[str, Any] = {
        "questions": {"count": len(examples), "sha256": questions_digest(examples)},
        "greedy": config.greedy,
        "num_samples": config.num_samples,
        "max_new_tokens": config.max_new_tokens,
        "answer_fallbacks": config.answer_fallbacks,
        "system_prompt": config.system_prompt,
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        "dtype": config.dtype,
        "generation_backend": generation_backend,
    }
    if config.num_samples > 0:
        settings.update(
            sampling_temperature=config.sampling_temperature,
            sampling_top_k=config.sampling_top_k,
            sampling_top_p=config.sampling_top_p,
            seed=config.seed,
        )
    return settings


def _local_files(path: Path) -> str:
    """sha256 of the names, sizes and modification times of a folder's files: a retrained or replaced model
    changes it (a copied folder does too: its results are then computed again, never wrongly reused)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _identity_of(name: str) -> dict[str, Any]:
    path = Path(name).expanduser()
    if path.is_dir():
        return {"path": str(path.resolve()), "files": _local_files(path)}
    return {"name": name}  # a Hub id or the bundled model


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What the model is: its folder (resolved, with its files' fingerprint) or its Hub id, and an adapter's base."""
    identity = {"model": _identity_of(spec.name_or_path)}
    if spec.adapter_base is not None:
        identity["adapter_base"] = _identity_of(spec.adapter_base)
    return identity


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``['max_new_tokens: 256 -> 512', ...]``: the settings that differ, for the refusal message."""
    before, after = _flatten(old), _flatten(new)
    keys = sorted(set(before) | set(after))
    return [
        f"{key}: {_short(before.get(key, '(unset)'))} -> {_short(after.get(key, '(unset)'))}"
        for key in keys
        if before.get(key) != after.get(key)
    ]


class SavedResults:
    """The finished models in ``output_dir``: which to reuse, which conflict, and where each new one goes."""

    def __init__(self, output_dir: str | Path, settings: dict[str, Any], overwrite: bool = False):
        self.output_dir = Path(output_dir)
        self.models_dir = self.output_dir / MODELS_DIRNAME
        self.settings = settings
        self.overwrite = overwrite

    def path(self, label: str) -> Path:
        return self.models_dir / f"{_UNSAFE_FILENAME_CHARS.sub('_', label)}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationResultsConflict(
                f"cannot read the saved results {path} ({exc}): delete it to evaluate that model again"
            ) from exc
        if not isinstance(entry, dict) or not {"label", "settings", "identity", "result"} <= entry.keys():
            raise EvaluationResultsConflict(
                f"{path} is not a saved model result (no label/settings/identity/result): delete it to evaluate "
                "that model again"
            )
        return entry

    def _conflict(self, what: str, changes: list[str]) -> EvaluationResultsConflict:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        if any(change.startswith("questions.") for change in changes):
            shown += " (the evaluated questions differ: source, seed, number, limit or exclusions)"
        return EvaluationResultsConflict(
            f"{what} was computed with other settings than this run ({shown}). To keep both, evaluate into a new "
            f"--output_dir; to evaluate again and replace it, pass --overwrite (results with the same settings are "
            "still reused)"
        )

    def check(self, specs: Sequence[ModelSpec]) -> dict[str, dict[str, Any]]:
        """Before any model runs: the saved results to reuse (by label); a conflicting file or results.json is
        refused (:class:`EvaluationResultsConflict`) unless ``overwrite``."""
        files = [self.path(spec.label).name for spec in specs]
        clashing = sorted({spec.label for spec, name in zip(specs, files) if files.count(name) > 1})
        if clashing:
            raise ValueError(
                f"model labels {clashing} would share one results file in {self.models_dir}: name them apart with "
                "'label=path' entries in --models (letters, digits and _.+- only)"
            )
        results_json = self.output_dir / RESULTS_FILENAME
        if results_json.is_file() and not self.overwrite:
            try:
                earlier = json.loads(results_json.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                earlier = {}
            recorded = earlier.get("settings") if isinstance(earlier, dict) else None
            if recorded is None:
                raise EvaluationResultsConflict(
                    f"{results_json} holds an earlier evaluation whose settings are not recorded (written by "
                    "ssb-trl before per-model results), so it cannot be reused or merged. To keep it, evaluate "
                    "into a new --output_dir; to replace it, pass --overwrite"
                )
            if recorded != self.settings:
                raise self._conflict(str(results_json), differences(recorded, self.settings))
        reusable: dict[str, dict[str, Any]] = {}
        for spec in specs:
            path = self.path(spec.label)
            if not path.is_file():
                continue
            entry = self._read(path)
            expected = {"label": spec.label, "settings": self.settings, "identity": model_identity(spec)}
            found = {key: entry[key] for key in expected}
            if found == expected:
                reusable[spec.label] = entry
            elif self.overwrite:
                logger.warning(
                    "%s was computed with other settings: evaluating %s again (--overwrite)", path, spec.label
                )
            else:
                raise self._conflict(f"{path} (model {spec.label!r})", differences(found, expected))
        labels = {self.path(spec.label).name for spec in specs}
        others = sorted(p.stem for p in self.models_dir.glob("*.json") if p.name not in labels)
        if others:
            logger.info("Kept in %s but not in this report (not in --models): %s", self.models_dir, ", ".join(others))
        return reusable

    def save(self, spec: ModelSpec, result: dict[str, Any]) -> str:
        """Write one finished model's result (atomically); return its finishing time (UTC, ISO 8601)."""
        finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry = {
            "label": spec.label,
            "finished_at": finished_at,
            "settings": self.settings,
            "identity": model_identity(spec),
            "result": result,
        }
        write_json(self.path(spec.label), entry, sort_keys=False)
        return finished_at

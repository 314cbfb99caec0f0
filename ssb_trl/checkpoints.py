"""A training run's output folder: its checkpoints (complete or cut short), where a relaunch starts, whether the
run is already finished, and which data it started on.

One command serves a first launch and every relaunch (``--resume_from_checkpoint true``): the newest *complete*
checkpoint is taken (:func:`checkpoint_problem`; one cut short by a crash or a kill while it was written is named
and skipped), a run whose checkpoint reached its end is finished (:func:`finished_state`), and resuming on other
data than the run started on is refused (:func:`check_same_dataset`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from ssb_trl.config import SSBConfig
from ssb_trl.storage import write_json

logger = logging.getLogger("ssb_trl.train")


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # Trainer's checkpoint folders (transformers.trainer_utils)
_SAVED_RUN_FILES = (
    "trainer_state.json",  # written by this recipe once the model is saved
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def _checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint-<step> folders of `output_dir`, by step."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def _saved_model(output_dir: Path) -> list[str]:
    return [name for name in _SAVED_RUN_FILES if (output_dir / name).is_file()]


TRAINER_STATE = "trainer_state.json"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
_WEIGHTS += ("adapter_model.bin", "pytorch_model.bin.index.json")


def _unreadable(path: Path) -> str | None:
    """Why a weights or state file cannot be loaded (its header or archive index), else None; reads no tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:  # checks that the header's tensors fit in the file
                handle.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            zipfile.ZipFile(path).close()  # torch.save's archive: its index is at the end, so a cut file has none
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the checkpoint is damaged
        return f"{path.name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete.

    Complete means: ``trainer_state.json`` (Trainer writes it last, so a checkpoint cut short by a crash or a kill
    lacks it) holds a step; the model's or adapter's weights are there (``model.safetensors``, its index and every
    shard it names, ``pytorch_model.bin``, ``adapter_model.*``; or DeepSpeed's ``global_step*`` folder); and every
    safetensors, ``.pt``/``.pth``/``.bin`` and JSON file at its top reads (a header or archive index that fits
    the file: a cut file does not). The optimizer and scheduler may be missing (``save_only_model``: training
    warns that they restart).
    """
    state_file = checkpoint / TRAINER_STATE
    if not state_file.is_file():
        return f"it has no {TRAINER_STATE} (Trainer writes it last: the checkpoint was cut short)"
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    for path in files:
        problem = _unreadable(path)
        if problem is not None:
            return problem
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"its {TRAINER_STATE} holds no global_step"
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.iterdir())
    weights = [name for name in _WEIGHTS if (checkpoint / name).is_file()]
    if not weights and not deepspeed:
        return f"it has no model or adapter weights (none of {', '.join(_WEIGHTS)})"
    for index in (name for name in weights if name.endswith(".index.json")):
        shards = set(json.loads((checkpoint / index).read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (checkpoint / shard).is_file())
        if missing:
            return f"{index} names missing shard(s) {', '.join(missing[:3])}"
    return None


def _newest_complete_checkpoint(folder: Path, checkpoints: list[Path]) -> Path:
    """The newest complete checkpoint; the newer incomplete ones are named in a warning (or, with none complete,
    in the error: which folders to delete)."""
    skipped = []
    for checkpoint in reversed(checkpoints):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if skipped:
                logger.warning(
                    "Skipping incomplete checkpoint(s) in %s: %s. Resuming from %s instead (the steps after it are "
                    "trained again and their checkpoints rewritten).",
                    folder,
                    "; ".join(skipped),
                    checkpoint.name,
                )
            return checkpoint
        skipped.append(f"{checkpoint.name}: {problem}")
    raise ValueError(
        f"--resume_from_checkpoint true: no checkpoint in {str(folder)!r} is complete ({'; '.join(skipped)}), so "
        f"there is nothing to resume from. Delete {' '.join(str(c) for c in checkpoints)} to start the run again "
        "from step 0 (or add --overwrite_output_dir true instead of --resume_from_checkpoint, which deletes them)."
    )


def decide_start(
    output_dir: str, resume: str | bool | None, overwrite: bool, is_main_process: bool = True
) -> str | bool | None:
    """Where training starts, or a refusal naming the flags to rerun with; returns `resume_from_checkpoint`.

    Trainer alone would start again from step 0 in a folder holding an earlier run, overwriting its model and
    leaving its checkpoints beside the new ones (a later resume would then pick the old run's latest).
    """
    folder = Path(output_dir)
    checkpoints, saved = _checkpoints(folder), _saved_model(folder)
    if overwrite:
        if resume:
            raise ValueError(
                "--overwrite_output_dir true starts over and --resume_from_checkpoint continues: pass one of them."
            )
        if is_main_process:
            for checkpoint in checkpoints:
                shutil.rmtree(checkpoint)
            if checkpoints:
                logger.warning(
                    "--overwrite_output_dir: deleted %d checkpoint(s) of the earlier run in %s",
                    len(checkpoints),
                    folder,
                )
        return None
    found = (
        f"{len(checkpoints)} checkpoint(s) ({checkpoints[0].name} .. {checkpoints[-1].name})" if checkpoints else ""
    )
    if saved:
        found += (" and " if found else "") + f"a trained model ({', '.join(saved)})"
    start_over = (
        "to start over in this folder, add --overwrite_output_dir true (YAML: overwrite_output_dir: true; it "
        "deletes the old checkpoints); or pass a new --output_dir"
    )
    if resume is True:
        if checkpoints:
            checkpoint = _newest_complete_checkpoint(folder, checkpoints)
            logger.info("Resuming from %s (the latest complete checkpoint in %s)", checkpoint, folder)
            return str(checkpoint)
        if saved:
            raise ValueError(
                f"--resume_from_checkpoint true: {output_dir!r} holds {found} but no checkpoint to resume from (the "
                "run saved none: save_strategy='no'?). To train that model further, pass it as --model_name_or_path "
                f"{output_dir} with a new --output_dir; {start_over}."
            )
        logger.info("No checkpoint in %s yet: starting the run from step 0", folder)
        return None
    if resume is not None:
        if not Path(resume).is_dir():
            latest = f" (the latest here is {checkpoints[-1]})" if checkpoints else ""
            raise ValueError(
                f"--resume_from_checkpoint {resume!r} is not a checkpoint folder. Pass the path of one{latest}, or "
                "true for the latest checkpoint in --output_dir."
            )
        problem = checkpoint_problem(Path(resume))
        if problem is not None:
            raise ValueError(
                f"--resume_from_checkpoint {resume!r} is incomplete: {problem}. Pass another checkpoint, or true for "
                "the newest complete one in --output_dir."
            )
        return resume
    if found:
        resume_hint = (
            "To continue that run, rerun the same command with --resume_from_checkpoint true (YAML: "
            f"resume_from_checkpoint: true; it resumes from {checkpoints[-1].name}); "
            if checkpoints
            else f"To train that model further, pass it as --model_name_or_path {output_dir} with a new --output_dir; "
        )
        raise ValueError(
            f"--output_dir {output_dir!r} already holds {found} of an earlier run; training again would restart at "
            f"step 0 and overwrite it. {resume_hint}{start_over}."
        )
    return None


def finished_state(checkpoint: str | None, args: SSBConfig) -> dict | None:
    """The trainer state of ``checkpoint`` when it is at (or past) the end of the run ``args`` describe, else None.

    Trainer, resumed from such a checkpoint, trains on: it skips the batches already seen and takes the next
    step before it checks the step count (``--max_steps 1`` resumed wrote checkpoint-2). The end is
    ``--max_steps``, or, counted in epochs, the checkpoint's own ``max_steps`` when the epochs are unchanged.
    """
    if checkpoint is None:
        return None
    state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    step, end = state.get("global_step", 0), None
    if args.max_steps > 0:
        end = args.max_steps
    elif state.get("num_train_epochs") == math.ceil(args.num_train_epochs) and (state.get("max_steps") or 0) > 0:
        end = state["max_steps"]
    return state if end is not None and step >= end else None


def final_model_at(output_dir: Path, step: int) -> bool:
    """Whether ``output_dir`` holds the run's final model, saved at ``step``."""
    try:
        saved_step = json.loads((output_dir / TRAINER_STATE).read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return False
    return saved_step == step and any(name != TRAINER_STATE for name in _saved_model(output_dir))


_DATASET_RECORD = "ssb_train_dataset.json"
"""In --output_dir: the data the run started on (name, resolved location, split, rows, content fingerprint)."""


def dataset_identity(name: str, split: str, dataset: Any) -> dict[str, Any]:
    """What the training data is: as named, where it resolves, which split, how many rows, its fingerprint."""
    path = Path(name).expanduser()
    return {
        "dataset_name": name,
        "location": str(path.resolve()) if path.exists() else name,
        "split": split,
        "num_rows": len(dataset),
        "fingerprint": getattr(dataset, "_fingerprint", None),
    }


def check_same_dataset(output_dir: str, identity: dict[str, Any], resuming: bool, is_main_process: bool) -> None:
    """Record the run's data when it starts; refuse to resume it on other data (naming both)."""
    record = Path(output_dir) / _DATASET_RECORD
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None  # a run started before this record existed: nothing to compare with
    if resuming and isinstance(recorded, dict) and recorded.get("fingerprint") != identity["fingerprint"]:

        def describe(entry: dict[str, Any]) -> str:
            return f"{entry.get('dataset_name')!r} (split {entry.get('split')!r}, {entry.get('num_rows')} rows)"

        if recorded.get("location") == identity["location"] and recorded.get("split") == identity["split"]:
            what = (
                f"the data at {identity['location']!r} changed since this run started: {describe(recorded)} then, "
                f"{describe(identity)} now"
            )
        else:
            what = f"this run started on {describe(recorded)} and is now given {describe(identity)}"
        raise ValueError(
            f"--resume_from_checkpoint: {what}. Resuming would train the rest of the run on other data, mixing the "
            f"two. Resume with --dataset_name {recorded.get('dataset_name')} (its data as it was), or train on the "
            "new data in a new --output_dir (or add --overwrite_output_dir true instead of --resume_from_checkpoint). "
            f"If it is the same data, delete {record} to resume anyway."
        )
    if is_main_process and (not resuming or not isinstance(recorded, dict)):
        write_json(record, identity)

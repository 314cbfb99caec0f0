"""Reconcile a rerun's settings with the run recorded in its folder: keep what still holds, redo what does not.

A run records ``{"kind", "config", "identities", "inputs"}`` (:func:`ssb_trl.jobs.runner.run_job` builds it). A
rerun is compared with it through the job's own :class:`ResumeTable`, "this setting -> the first stage it feeds":

* a change that feeds a later stage drops that stage's files and the ones after it, and keeps the earlier ones
  (new teacher settings redo teacher answers and soft labels; new soft-label settings only the soft labels);
* a change that feeds the first stage is refused while that stage holds finished work (it would throw all of it
  away); with no finished work the run starts afresh;
* inputs are compared shard by shard: a shard whose inputs changed is redone whole, the others are kept (a larger
  ``num_questions``, an input file edited in place).

Models, tokenizers and input files are compared by what they are (:mod:`ssb_trl.jobs.identity`), not how they
were typed. Folders written before the run engine are read through :func:`upgrade_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssb_trl.deprecations import renamed_settings
from ssb_trl.jobs.identity import input_changed, legacy_tokenizer_digest, model_changes
from ssb_trl.jobs.workdir import WorkDir


@dataclass(frozen=True)
class ResumeTable:
    """A job's answer to "which stage does this setting feed?" (see the module docstring).

    ``stage_of``: setting -> stage for the settings that do not feed ``default_stage``. ``identities``: identity
    name -> (how it is compared: "model" or "input", the stage it feeds). ``compared_by_content``: config fields
    whose effect is judged by the identities and the per-shard input digests instead (an input's name, a model's).
    ``defaults``: the value a setting had before a version added it.
    """

    default_stage: str
    stage_of: dict[str, str] = field(default_factory=dict)
    identities: dict[str, tuple[str, str]] = field(default_factory=dict)
    compared_by_content: frozenset[str] = frozenset()
    defaults: dict[str, Any] = field(default_factory=dict)

    def stage(self, setting: str) -> str:
        return self.stage_of.get(setting, self.default_stage)


def claim(work: WorkDir, settings: dict[str, Any], table: ResumeTable) -> list[str]:
    """Record ``settings`` for a new run, or reconcile them with the run already in ``work``.

    Returns what was done, one line each (empty for a new run or an unchanged resume); raises a ``ValueError``
    naming the changes and the fix when the change would throw finished first-stage work away.
    """
    recorded = work.read_settings()
    if recorded is None:
        work.check_usable()
        work.write_settings(settings)
        return []
    if recorded.get("kind", "ssb-trl prepare") != settings["kind"]:
        raise ValueError(
            f"output_dir {str(work.output_dir)!r} holds a `{recorded.get('kind', 'ssb-trl prepare')}` run, not a "
            f"`{settings['kind']}` run; choose another --output_dir"
        )
    if recorded == settings:
        return []
    changed, stage_of = _changes(recorded, settings, table)
    stages = work.stage_names
    old_digests, new_digests = recorded["inputs"]["shard_sha256"], settings["inputs"]["shard_sha256"]
    first = min((stages.index(stage_of[key]) for key in changed), default=len(stages))
    finished = {stage: work.finished_shards(stage) for stage in stages}
    notes = []
    if first == 0 and finished[stages[0]]:
        raise ValueError(
            f"output_dir {str(work.output_dir)!r} holds a run with different settings ({_describe(changed)}). These "
            f"determine the {work.describe(stages[0])}, the first stage, so the finished work ({len(finished[stages[0]])} "
            f"shards of {work.describe(stages[0])}) cannot be reused. Rerun with the recorded settings to resume it "
            f"(they are in {str(work.settings_path)!r}), or choose another --output_dir (or delete that one) to start "
            f"afresh. Settings of later stages may change between runs: {_later_settings(table, stages, work.noun)}."
        )
    if first < len(stages):
        redone = stages[first:]
        if any(finished[stage] for stage in redone):
            kept = [stage for stage in stages[:first] if finished[stage]]
            notes.append(
                f"settings changed ({_describe(changed)}): "
                + (
                    "reusing the finished "
                    + ", ".join(f"{work.describe(s)} ({_within(finished[s], new_digests)} shards)" for s in kept)
                    + "; "
                    if kept
                    else ""
                )
                + "redoing "
                + ", ".join(work.describe(stage) for stage in redone)
            )
        for stage in redone:
            for shard in finished[stage]:
                work.remove(stage, shard)
    differing = [i for i in range(min(len(old_digests), len(new_digests))) if old_digests[i] != new_digests[i]]
    stale = [i for i in differing if any(i in work.finished_shards(stage) for stage in stages)]
    for shard in stale:
        for stage in stages:
            work.remove(stage, shard)
    old_count, new_count = recorded["inputs"]["count"], settings["inputs"]["count"]
    kept = len([i for i in work.finished_shards(stages[0]) if i < len(new_digests)])
    if old_count != new_count:
        notes.append(
            f"the number of {work.noun} changed ({old_count} -> {new_count}): keeping {kept} finished shards"
            + (f", redoing shard(s) {stale} (their {work.noun} changed)" if stale else "")
            + f"; {len(new_digests) - kept} of {len(new_digests)} shards to do"
        )
    elif stale:
        notes.append(
            f"the {work.noun} of shard(s) {stale} differ from the recorded run's (the input was edited): redoing "
            f"those shards; keeping the {kept} other finished shards"
        )
    if len(old_digests) > len(new_digests):  # keep them, so a later run that grows again can trust those files
        settings = {
            **settings,
            "inputs": {**settings["inputs"], "shard_sha256": new_digests + old_digests[len(new_digests) :]},
        }
    work.write_settings(settings)
    return notes


def check_claimed(work: WorkDir, settings: dict[str, Any]) -> None:
    """For a process other than the main one: the main process recorded these settings (else they disagree)."""
    recorded = work.read_settings() or {}
    if (
        recorded.get("config") != settings["config"]
        or recorded.get("inputs", {}).get("count") != settings["inputs"]["count"]
    ):
        raise RuntimeError(
            f"this process's settings differ from those the main process recorded in {work.settings_path}; "
            "launch every process with the same settings"
        )


def _changes(
    recorded: dict[str, Any], settings: dict[str, Any], table: ResumeTable
) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """What changed (name -> (recorded, now)), and the first stage each change feeds."""
    old_cfg, new_cfg = recorded.get("config", {}), settings["config"]
    defaults = table.defaults
    changed = {
        key: (old_cfg.get(key, defaults.get(key)), new_cfg.get(key, defaults.get(key)))
        for key in sorted(set(old_cfg) | set(new_cfg))
        if key not in table.compared_by_content
        and old_cfg.get(key, defaults.get(key)) != new_cfg.get(key, defaults.get(key))
    }
    stage_of = {key: table.stage(key) for key in changed}
    old_ids, new_ids = recorded.get("identities", {}), settings.get("identities", {})
    for name, (kind, stage) in table.identities.items():
        old, new = old_ids.get(name), new_ids.get(name)
        if old is None or new is None:  # not recorded by the run that wrote the folder: nothing to compare
            continue
        found = model_changes(name, old, new) if kind == "model" else {}
        if kind == "input" and input_changed(old, new):
            found = {name: (old.get("name") or old.get("path"), new.get("name") or new.get("path"))}
        changed.update(found)
        stage_of.update(dict.fromkeys(found, stage))
    return changed, stage_of


def _describe(changed: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())


def _within(shards: list[int], digests: list[str]) -> int:
    return sum(1 for shard in shards if shard < len(digests))


def _later_settings(table: ResumeTable, stages: tuple[str, ...], noun: str) -> str:
    """The settings a rerun may change, in words."""
    first = sorted(key for key, stage in table.stage_of.items() if stage == stages[0])
    later = sorted(key for key, stage in table.stage_of.items() if stage != stages[0])
    if table.default_stage != stages[0]:  # the job names the few settings of its first stage
        return f"all but {', '.join(first)} and the models and input themselves; the number of {noun} too"
    return f"{', '.join(later)}, and the number of {noun}"


def upgrade_settings(
    recorded: dict[str, Any] | None, tokenizers: dict[str, Any], command: str = ""
) -> dict[str, Any] | None:
    """Settings a folder recorded before today's names and layout, in today's (only ever read, then rewritten):
    renamed settings under their new names (:func:`ssb_trl.deprecations.renamed_settings`), and the layout of the
    folders written before the run engine (:func:`_engine_layout`)."""
    upgraded = _engine_layout(recorded, tokenizers)
    if upgraded is None:
        return None
    name = command.removeprefix("ssb-trl ")
    return {**upgraded, "config": renamed_settings(name, upgraded.get("config", {}))}


def _engine_layout(recorded: dict[str, Any] | None, tokenizers: dict[str, Any]) -> dict[str, Any] | None:
    """Settings a folder recorded before the run engine, in today's layout (only ever read, then rewritten).

    ``ssb-trl prepare`` wrote ``{config, questions, prompt_template_version, model, source}``; ``ssb-trl label``
    wrote ``{kind, config, teacher, student_tokenizer, input}`` with its own tokenizer digest (recognised here by
    recomputing it for ``tokenizers``: identity name -> the tokenizer of this run) and a model compared by name
    recorded with its name as ``sha256``.
    """
    if recorded is None or "identities" in recorded:
        return recorded
    if "questions" in recorded:  # ssb-trl prepare
        config = {**recorded.get("config", {}), "prompt_template_version": recorded.get("prompt_template_version")}
        source = recorded.get("source") or {}
        name = config.get("source", config.get("dataset_name"))
        return {
            "kind": "ssb-trl prepare",
            "config": config,
            "identities": {
                "model": recorded.get("model"),
                "source": {**source, "name": name} if source else None,
            },
            "inputs": recorded["questions"],
        }
    teacher = dict(recorded.get("teacher") or {})
    if teacher.get("kind") == "name":
        teacher["sha256"] = None
    digest = teacher.pop("tokenizer", None)
    if "teacher" in tokenizers and digest == legacy_tokenizer_digest(tokenizers["teacher"][0]):
        digest = tokenizers["teacher"][1]
    teacher["tokenizer_sha256"] = digest
    student = recorded.get("student_tokenizer")
    if "student" in tokenizers and student == legacy_tokenizer_digest(tokenizers["student"][0]):
        student = tokenizers["student"][1]
    return {
        "kind": recorded.get("kind", "ssb-trl label"),
        "config": recorded.get("config", {}),
        "identities": {"teacher": teacher, "student": {"tokenizer_sha256": student}},
        "inputs": recorded["input"],
    }

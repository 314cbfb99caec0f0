"""The ``ssb-trl`` command: ``ssb-trl prepare|train|evaluate|inspect [flags]``, like TRL's ``trl sft``.

``prepare`` and ``train`` run through ``accelerate launch`` as TRL's commands do: flags the script does not
know (``--num_processes 8``, ``--config_file x.yaml``, ``--mixed_precision bf16``) go to accelerate, and
``--accelerate_config NAME`` picks a config shipped in ``ssb_trl/accelerate_configs`` (``ddp``,
``deepspeed_zero2``, ``deepspeed_zero3``, ``deepspeed_zero3_offload``) or a YAML path. ``evaluate`` and
``inspect`` run in this process (one process writes one report).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import sys
from pathlib import Path

from accelerate.commands.launch import launch_command, launch_command_parser

from ssb_trl.scripts import configure_logging

COMMANDS = {  # command -> (module in ssb_trl.scripts, help)
    "prepare": ("prepare", "Prepare a soft-label dataset (rollouts, hinted teacher, top-K soft labels); resumable"),
    "train": ("train", "Train with SSBTrainer on a soft-label dataset"),
    "evaluate": (
        "evaluate",
        "Evaluate models side by side: pass@1, mean@n with 95%% intervals",
    ),  # argparse %-formats help
    "inspect": ("inspect_data", "Inspect a soft-label dataset: size, K, T, top-K mass, bytes, one decoded row"),
}
LAUNCHED_COMMANDS = ("prepare", "train")


def accelerate_config_path(name_or_path: str) -> str:
    """A YAML path as given, or the path of a config shipped with ssb-trl (``deepspeed_zero3``...)."""
    if Path(name_or_path).is_file():
        return name_or_path
    shipped = importlib.resources.files("ssb_trl") / "accelerate_configs"
    candidate = shipped.joinpath(f"{name_or_path}.yaml")
    if not candidate.is_file():
        names = sorted(p.name.removesuffix(".yaml") for p in shipped.iterdir() if p.name.endswith(".yaml"))
        raise SystemExit(f"--accelerate_config {name_or_path!r} is neither a file nor one of {names}")
    return str(candidate)


def _launch_args(unknown: list[str]) -> list[str]:
    """Turn ``--accelerate_config X`` into ``--config_file PATH``; pass everything else to accelerate."""
    if "--accelerate_config" not in unknown:
        return unknown
    i = unknown.index("--accelerate_config")
    if i + 1 >= len(unknown):
        raise SystemExit("--accelerate_config needs a value: a YAML path or a shipped config name")
    return ["--config_file", accelerate_config_path(unknown[i + 1])] + unknown[:i] + unknown[i + 2 :]


def _without(args: list[str], subsequence: list[str]) -> list[str]:
    """``args`` minus the ordered ``subsequence`` (the flags meant for accelerate)."""
    rest, pending = [], iter(subsequence)
    current = next(pending, None)
    for arg in args:
        if current is not None and arg == current:
            current = next(pending, None)
        else:
            rest.append(arg)
    return rest


def run_command(command: str, args: list[str]) -> None:
    """Parse ``args`` with the script's own parser (``-h`` works, bad flags fail here), then run it."""
    module_name = COMMANDS[command][0]
    module = importlib.import_module(f"ssb_trl.scripts.{module_name}")
    parser = module.make_parser(prog=f"ssb-trl {command}")
    if command not in LAUNCHED_COMMANDS:
        configure_logging()
        module.main(*parser.parse_args_and_config(args))
        return
    *_, config_unknown, cli_unknown = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = _launch_args(config_unknown + cli_unknown)
    script = str(importlib.resources.files("ssb_trl.scripts").joinpath(f"{module_name}.py"))
    launch_command(launch_command_parser().parse_args(launch_args + [script] + _without(args, cli_unknown)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ssb-trl", description="Semantic Soft Bootstrapping for TRL.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0
    run_command(known.command, argv[argv.index(known.command) + 1 :])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

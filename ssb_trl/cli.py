"""The ``ssb-trl`` command: ``ssb-trl prepare|label|train|evaluate|inspect [flags]``, like TRL's ``trl sft``.

``prepare``, ``label`` and ``train`` run through ``accelerate launch`` as TRL's commands do: flags the script does not
know (``--num_processes 8``, ``--config_file x.yaml``, ``--mixed_precision bf16``) go to accelerate, and
``--accelerate_config NAME`` picks one of the configs TRL ships (``zero1``, ``zero2``, ``zero3``, ``fsdp1``,
``fsdp2``, ``multi_gpu``, ``single_gpu``), ssb-trl's ``zero3_offload``, or a YAML path. ``evaluate`` and
``inspect`` run in this process (one process writes one report). Renamed flags and values keep working for one
release with a warning (``ssb_trl.deprecations``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ssb_trl import __version__
from ssb_trl.errors import DEBUG_ENV, ERROR_FILE_ENV, error_line, launched_errors
from ssb_trl.scripts.common import COMMANDS, configure_logging, parse_settings, run_script

LAUNCHED_COMMANDS = ("prepare", "label", "train")
SHARDED_COMMANDS = ("prepare", "label")  # the offline jobs: their processes split the shards


_OWN_ACCELERATE_CONFIGS = ("zero3_offload",)  # shipped by ssb-trl: TRL ships the others (trl/accelerate_configs)


def _accelerate_config_names() -> list[str]:
    """The names --accelerate_config takes: TRL's shipped configs and ssb-trl's own (without the old names)."""
    trl_configs = importlib.resources.files("trl.accelerate_configs")
    names = [p.name.removesuffix(".yaml") for p in trl_configs.iterdir() if p.name.endswith(".yaml")]
    return sorted({*names, *_OWN_ACCELERATE_CONFIGS})


def accelerate_config_path(name_or_path: str) -> str:
    """A YAML path as given, or the path of a shipped config: TRL's (``zero3``, ``multi_gpu``, ``fsdp2``...),
    resolved by TRL's own resolver, or ssb-trl's ``zero3_offload``. Old names are renamed before this
    (``ssb_trl.deprecations``)."""
    if Path(name_or_path).is_file():
        return name_or_path
    if name_or_path in _OWN_ACCELERATE_CONFIGS:
        return str(importlib.resources.files("ssb_trl") / "accelerate_configs" / f"{name_or_path}.yaml")
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    try:
        return str(resolve_accelerate_config_argument(["--accelerate_config", name_or_path])[1])
    except ValueError:
        raise SystemExit(
            f"--accelerate_config {name_or_path!r} is neither a file nor one of {_accelerate_config_names()}"
        ) from None


def _launch_args(unknown: list[str]) -> list[str]:
    """Turn ``--accelerate_config X`` into ``--config_file PATH``; pass everything else to accelerate."""
    if "--accelerate_config" not in unknown:
        return unknown
    i = unknown.index("--accelerate_config")
    if i + 1 >= len(unknown):
        raise SystemExit("--accelerate_config needs a value: a YAML path or a shipped config name")
    return ["--config_file", accelerate_config_path(unknown[i + 1])] + unknown[:i] + unknown[i + 2 :]


def _processes_on_cpu(prog: str, namespace: argparse.Namespace) -> None:
    """``--num_processes N`` for the jobs that split shards (prepare, label) on a machine without a GPU: N CPU
    processes over gloo, launched as ``--accelerate_config multi_gpu`` launches them (accelerate alone would run one
    process without a word). Where there are GPUs, or the launch names a distributed mode, accelerate decides."""
    import torch
    from accelerate.commands.config import default_config_file, load_config_from_file
    from accelerate.utils import DistributedType

    modes = ("multi_gpu", "use_deepspeed", "use_fsdp", "tpu", "use_megatron_lm")
    if torch.cuda.is_available() or any(getattr(namespace, mode, False) for mode in modes):
        return
    processes, config_file = namespace.num_processes, namespace.config_file
    if config_file is None and os.path.isfile(default_config_file) and not namespace.cpu:
        config_file = default_config_file  # accelerate reads the user's default config (`accelerate config`)
    if config_file is not None:
        config = load_config_from_file(config_file)
        if getattr(config, "distributed_type", DistributedType.NO) != DistributedType.NO:
            return
        processes = processes or getattr(config, "num_processes", None)
    if processes is None or processes < 2:
        return
    namespace.multi_gpu, namespace.cpu = True, False
    print(f"{prog}: {processes} processes on the CPU (torchrun over gloo, as with --accelerate_config multi_gpu)",
          file=sys.stderr)  # fmt: skip


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


def _exit_code(returncode: int) -> int:
    """A process killed by signal N exits 128 + N, as in a shell (Python would turn -9 into 247)."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name + (" (out of memory?)" if number == signal.SIGKILL else "")
    except ValueError:
        return f"signal {number}"


def _launch(launch_args: argparse.Namespace, error_file: str) -> tuple[int, str | None]:
    """Run ``accelerate launch``; the exit code, and what to say when the processes left no message."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    previous = os.environ.get(ERROR_FILE_ENV)
    os.environ[ERROR_FILE_ENV] = error_file  # accelerate starts the processes with a copy of this environment
    try:
        launch_command(launch_args)
        return 0, None
    except subprocess.CalledProcessError as failed:  # one process: its stderr went through as it ran
        code = failed.returncode
        if code < 0:
            return _exit_code(code), f"the launched process was killed by {_signal_name(-code)}"
        return code, None
    except ChildFailedError as failed:  # torchrun (several processes): the failed ranks and their exit codes
        codes = [failure.exitcode for failure in failed.failures.values()]
        return _exit_code(codes[0]) if codes and codes[0] else 1, str(failed)
    finally:
        if previous is None:
            os.environ.pop(ERROR_FILE_ENV, None)
        else:
            os.environ[ERROR_FILE_ENV] = previous


def launch_script(command: str, parser: Any, args: list[str]) -> int:
    """Check the flags here, then run the script through ``accelerate launch``; end with its error, if any.

    The processes hand their one-line errors to this one (``SSB_TRL_ERROR_FILE``): it prints them last and
    exits with their code, instead of accelerate's ``CalledProcessError`` traceback.
    """
    from accelerate.commands.launch import launch_command_parser

    args, (*_, config_unknown, cli_unknown) = parse_settings(
        parser, args, command, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = _launch_args(config_unknown + cli_unknown)
    script = str(importlib.resources.files("ssb_trl.scripts").joinpath(f"{COMMANDS[command][0]}.py"))
    namespace = launch_command_parser().parse_args(launch_args + [script] + _without(args, cli_unknown))
    if command in SHARDED_COMMANDS:
        _processes_on_cpu(parser.prog, namespace)
    with tempfile.TemporaryDirectory(prefix="ssb-trl-") as tmp:
        code, fallback = _launch(namespace, os.path.join(tmp, "errors.jsonl"))
        messages = launched_errors(os.path.join(tmp, "errors.jsonl"))
    if code and not messages and fallback:
        print(f"{parser.prog}: error: {fallback}", file=sys.stderr)
    for message in messages:
        print(error_line(parser.prog, message), file=sys.stderr)
    return code


def run_command(command: str, args: list[str]) -> int:
    """Parse ``args`` with the script's own parser (``-h`` works, bad flags fail here), then run it."""
    module = importlib.import_module(f"ssb_trl.scripts.{COMMANDS[command][0]}")
    parser = module.make_parser(prog=f"ssb-trl {command}")
    if command in LAUNCHED_COMMANDS:
        return launch_script(command, parser, args)
    configure_logging()
    run_script(module.main, parser, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ssb-trl", description="Semantic Soft Bootstrapping for TRL.")
    parser.add_argument("--version", action="version", version=f"ssb-trl {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"Show the traceback of every error, also in launched processes (the same as {DEBUG_ENV}=1). "
        "Give it before the command: ssb-trl --debug train ...",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0
    if known.debug:
        os.environ[DEBUG_ENV] = "1"  # the processes accelerate launches inherit it
    return run_command(known.command, argv[argv.index(known.command) + 1 :])


if __name__ == "__main__":
    raise SystemExit(main())

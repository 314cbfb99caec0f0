"""How the commands show a failure: ssb-trl's own errors about its input as one line, anything else in full.

A user who passes a wrong path or setting needs the message ssb-trl wrote for them, not forty lines of stack
that, through ``accelerate launch``, end in ``CalledProcessError``. The rule for "ssb-trl's own error":

* while the flags and the ``--config`` YAML are read: a ``ValueError``, ``OSError`` or YAML error from any code
  (ssb-trl's settings checks, TRL's and transformers' own, a missing or malformed config file);
* while a command runs: a ``ValueError`` (``SoftLabelError``, ``NoPairsError``, ``EvaluationDataError`` are
  ValueErrors), ``OSError``, ``ImportError``, ``RuntimeError`` or ``FloatingPointError`` raised by ssb-trl's
  own code, that is, the innermost frame of its traceback is in the ``ssb_trl`` package.

Everything else (a ``KeyError``, a ``TypeError``, an error raised inside torch or transformers during the run)
is a bug or a library failure and keeps its traceback. ``SSB_TRL_DEBUG=1`` (or ``ssb-trl --debug``) shows the
traceback of every error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEBUG_ENV = "SSB_TRL_DEBUG"
"""Set to 1 to see the traceback of every error (the launched processes inherit it)."""

ERROR_FILE_ENV = "SSB_TRL_ERROR_FILE"
"""Set by ``ssb-trl prepare|train`` for the processes it launches: they append their error message here, and
the command prints it as its last line (after whatever accelerate or torchrun print when a process fails)."""

ERROR_EXIT_CODE = 1
PACKAGE_DIR = Path(__file__).resolve().parent
_TYPES_WHILE_RUNNING = (ValueError, OSError, ImportError, RuntimeError, FloatingPointError)
_BUGS = (NotImplementedError, RecursionError)  # RuntimeErrors that are never about the input


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def raised_by_ssb_trl(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is ssb-trl code (its ``raise`` or call failed)."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    path = Path(traceback.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(PACKAGE_DIR) and path != Path(__file__).resolve()


def is_input_error(error: BaseException, while_parsing: bool = False) -> bool:
    """ssb-trl's own error about its input (shown as one line), per the rule in this module's docstring."""
    if while_parsing:
        import yaml  # light, and TrlParser has loaded it already

        return isinstance(error, (ValueError, OSError, yaml.YAMLError))
    return isinstance(error, _TYPES_WHILE_RUNNING) and not isinstance(error, _BUGS) and raised_by_ssb_trl(error)


def error_message(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


def error_line(prog: str, message: str) -> str:
    """``prog: error: message (hint)``: the hint stays on the error's line, so the error is the last line."""
    return f"{prog}: error: {message} ({DEBUG_ENV}=1 shows the traceback)"


def show_error(prog: str, message: str) -> None:
    """Print the error line on stderr, or hand the message to the ``ssb-trl`` command that launched this process
    (it prints it last, after whatever the launcher printed)."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        with open(error_file, "a") as f:
            f.write(json.dumps(message) + "\n")
        return
    sys.stderr.flush()
    print(error_line(prog, message), file=sys.stderr, flush=True)


def launched_errors(error_file: str | Path) -> list[str]:
    """The messages the launched processes left in ``error_file`` (each once: every rank may report the same)."""
    path = Path(error_file)
    if not path.is_file():
        return []
    return list(dict.fromkeys(json.loads(line) for line in path.read_text().splitlines() if line.strip()))


@contextmanager
def reported_errors(prog: str, while_parsing: bool = False) -> Iterator[None]:
    """Turn ssb-trl's own errors raised in the block into one line and exit code 1; re-raise anything else."""
    try:
        yield
    except Exception as error:
        if debug_enabled() or not is_input_error(error, while_parsing):
            raise
        show_error(prog, error_message(error))
        raise SystemExit(ERROR_EXIT_CODE) from None

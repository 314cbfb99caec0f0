"""Math-Verify in a child process with a hard time limit, so grading is thread-safe and always returns.

Math-Verify's own timeouts use ``signal.alarm``, which only works in the main thread, and some sympy calls
(``10^{10^{10}}``) cannot be interrupted at all. So comparisons run in a child process (one per concurrent caller,
started on first use, reused). A comparison that takes longer than ``MATH_VERIFY_TIMEOUT_S`` kills the child (a
fresh one starts on the next call) and is :class:`Undecided` (the caller counts it as not correct). Every call
returns within ``MATH_VERIFY_TIMEOUT_S`` (plus about a second when a worker has to start) from any thread or
process, data-loader workers included. POSIX only (``select`` on pipes). This file imports nothing from ssb_trl:
the child runs it directly, without importing the package (which would pull in torch and transformers).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

MATH_VERIFY_TIMEOUT_S = 5.0
"""Hard limit on one Math-Verify comparison (any thread); past it the answer counts as not correct."""

WORKER_START_TIMEOUT_S = 120.0
"""Time allowed for a Math-Verify worker process to import sympy and say it is ready (a busy machine is slow)."""


def _math_verify_parse(text: str) -> list[Any]:
    """Parse ``text`` as one LaTeX expression: no number is picked out of it, no unit letters are dropped."""
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse

    config = LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )
    return parse(
        f"\\boxed{{{text}}}",
        extraction_config=[config],
        extraction_mode="first_match",
        fallback_mode="no_fallback",
        parsing_timeout=None,
    )


def _serve() -> None:
    """Child process loop: say ready, then one JSON request per line in, one JSON reply per line out."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    sys.stdout = sys.stderr
    from math_verify import verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": the parent enforces one
    reply = bool(_math_verify_parse("1"))  # warm up the parser before saying ready
    while True:
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        line = sys.stdin.readline()
        if not line:
            return
        op, *args = json.loads(line)
        try:
            if op == "parse":
                reply = bool(_math_verify_parse(args[0]))
            else:
                gold, answer = (_math_verify_parse(arg) for arg in args)
                reply = bool(gold and answer and verify(gold, answer, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - a comparison Math-Verify cannot make is "not equal"
            reply = False


class Undecided(Exception):
    """The child did not answer in time (or died); never cached."""


class _Worker:
    """One Math-Verify child process. Started with ``subprocess`` (not ``multiprocessing``) so it works from
    daemonic data-loader workers and never re-imports the caller's ``__main__``."""

    def __init__(self) -> None:
        # Run this very file (not ``-m``): importing the ssb_trl package would pull in torch and transformers.
        bootstrap = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__ssb_math_verify_worker__')"
        self.process = subprocess.Popen(
            [sys.executable, "-c", bootstrap, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""
        try:
            self._read_reply(WORKER_START_TIMEOUT_S)
        except Undecided as exc:
            raise RuntimeError(
                f"the Math-Verify grading process did not start ({exc}); is math-verify installed for "
                f"{sys.executable}? (its error, if any, is printed above)"
            ) from exc

    def ask(self, request: list[str], timeout: float) -> bool:
        """Send one request; its reply, or :class:`Undecided` after ``timeout`` seconds (the child is killed)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError as exc:
            self.close()
            raise Undecided(f"the Math-Verify worker is gone ({exc})") from exc
        return self._read_reply(timeout)

    def _read_reply(self, timeout: float) -> bool:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        try:
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise Undecided(f"no answer within {timeout:g} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise Undecided("the Math-Verify worker exited")
                self._buffer += chunk
        except BaseException:  # a timeout, or an interrupt: never leave a child computing on its own
            self.close()
            raise
        line, self._buffer = self._buffer.split(b"\n", 1)
        return bool(json.loads(line))

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


_idle_workers: list[_Worker] = []
_idle_lock = threading.Lock()


def _forget_parent_workers() -> None:
    """In a forked child: the parent's workers and lock are the parent's; start afresh."""
    global _idle_workers, _idle_lock
    _idle_workers, _idle_lock = [], threading.Lock()


def _close_idle_workers() -> None:
    with _idle_lock:
        while _idle_workers:
            _idle_workers.pop().close()


os.register_at_fork(after_in_child=_forget_parent_workers)
atexit.register(_close_idle_workers)


def ask_math_verify(request: list[str]) -> bool:
    """Run ``request`` in an idle worker (or a new one); a timed-out worker is killed and not reused."""
    with _idle_lock:
        worker = _idle_workers.pop() if _idle_workers else None
    if worker is None or worker.process.poll() is not None:
        worker = _Worker()
    result = worker.ask(request, MATH_VERIFY_TIMEOUT_S)  # raises Undecided (worker closed) on timeout
    with _idle_lock:
        _idle_workers.append(worker)
    return result


if __name__ == "__ssb_math_verify_worker__":
    _serve()

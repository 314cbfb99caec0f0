"""Soft labels (METHOD.md step 6): the teacher's top-K log-probs on its own answer, one teacher-forced pass."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ssb_trl.compact_labels import LOGPROB_CODE_DTYPE, compact_soft_label_rows
from ssb_trl.contract import LOGPROB_DTYPES


def _validate_extraction_inputs(sequences: list[list[int]], answer_starts: list[int]) -> None:
    if len(sequences) != len(answer_starts):
        raise ValueError(f"{len(sequences)} sequences but {len(answer_starts)} answer starts.")
    for i, (seq, start) in enumerate(zip(sequences, answer_starts)):
        if not 1 <= start < len(seq):
            raise ValueError(
                f"sequence {i}: answer start {start} must be within [1, {len(seq) - 1}] "
                "(the answer needs a prompt before it and at least one token)."
            )


@torch.no_grad()
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
    """Teacher-forced top-K log-probs on the answer span of each sequence.

    Row j of a result is the distribution over answer token j (`sequence[answer_start + j]`), read
    from the logits at position `answer_start + j - 1`, at `temperature`, normalised over the whole
    vocabulary. Only answer positions are projected to the vocabulary, and top-K runs on the model's
    device, so memory stays at [batch tokens, hidden] plus one [answer tokens, vocab] slice per sequence.
    Sequences are processed longest first in right-padded batches.

    Returns, per sequence (input order): (ids int32 [n_answer, K], logprobs [n_answer, K] in `logprob_dtype`);
    with `logprob_dtype="uint8"` the compact format (`ssb_trl.compact_labels`): ids in the vocabulary's narrowest
    dtype and uint8 log-prob codes, encoded from the float32 log-probs.
    """
    _validate_extraction_inputs(sequences, answer_starts)
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    lm_head = model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, {vocab}] (the vocabulary size), got {top_k}.")
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
            values, ids = logprobs.topk(top_k, dim=-1)
            if logprob_dtype == LOGPROB_CODE_DTYPE:
                results[i] = compact_soft_label_rows(ids.cpu().numpy(), values.cpu().numpy(), vocab)
            else:
                results[i] = (
                    ids.to(torch.int32).cpu().numpy(),
                    values.to(getattr(torch, logprob_dtype)).cpu().numpy(),
                )
    model.train(was_training)
    return results  # type: ignore[return-value]

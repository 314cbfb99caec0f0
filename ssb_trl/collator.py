"""SSBDataCollator: pads tokens, masks and soft labels of a batch together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssb_trl.soft_labels.codec import decode_logprobs_tensor
from ssb_trl.soft_labels.schema import COMPLETION_MASK, INPUT_IDS, TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS


@dataclass
class SSBDataCollator:
    """Right-pads `input_ids` and concatenates the soft labels of all answer tokens in order.

    Output keys: `input_ids`, `attention_mask`, `labels` (-100 off the answer; its non-ignored
    positions, scanned row-major, are exactly the rows of the soft labels), `teacher_topk_ids`
    [n_answer_tokens, K] and `teacher_topk_logprobs` [n_answer_tokens, K]. Concatenating instead of
    padding to [batch, max_answer, K] keeps memory proportional to real answer tokens.

    Log-probs come out as float32 from either format: float16/32 values as they are, compact uint8 codes
    (format version 2, `ssb_trl.soft_labels.codec`) decoded, so the loss is the same code path for both.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    ids_column: str = TEACHER_TOPK_IDS
    logprobs_column: str = TEACHER_TOPK_LOGPROBS

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(example[INPUT_IDS]) for example in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        topk_ids, topk_logprobs = [], []
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example[INPUT_IDS], dtype=torch.long)
            answer = torch.as_tensor(example[COMPLETION_MASK], dtype=torch.bool)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.where(answer, ids, -100)
            topk_ids.append(torch.as_tensor(example[self.ids_column], dtype=torch.long))
            topk_logprobs.append(decode_logprobs_tensor(torch.as_tensor(example[self.logprobs_column])))
        return {
            INPUT_IDS: input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            TEACHER_TOPK_IDS: torch.cat(topk_ids),
            TEACHER_TOPK_LOGPROBS: torch.cat(topk_logprobs),
        }

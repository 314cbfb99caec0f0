"""THE soft-label dataset format: column names, Arrow features, metadata, format versions.

One row per training example (TRL prompt-completion format plus the soft labels):

  id, answer             row id and gold answer (provenance; not read by training)
  prompt, completion     conversational messages; the prompt is the *student's* prompt (no hints)
  input_ids              chat-templated student prompt + answer, ending with the end-of-turn token
  completion_mask        1 on answer tokens (end-of-turn included), 0 on the prompt
  teacher_topk_ids       [n_answer][K] ids, most probable first
  teacher_topk_logprobs  [n_answer][K] log-probs over the full vocabulary at `temperature`

Row j of the soft labels is the teacher's distribution over answer token j (predicted at position
prompt_len + j - 1). The tail bucket log(1 - sum(exp(topk))) is derived, never stored. How the two soft-label
columns are stored (float, compact 8-bit codes: version 2, sampled draws: version 3) is
:mod:`ssb_trl.soft_labels.codec`.

Dataset-level :class:`SoftLabelMetadata` (teacher, tokenizer fingerprint, K, temperature, prompt version, source
and sampling settings) is stored once, as ``ssb_metadata.json`` beside the data, on disk and on the Hub alike. In
memory it rides in ``Dataset.info.description``, so a loaded dataset carries it into ``SSBTrainer``. The checks
are :mod:`ssb_trl.soft_labels.checks`, saving and loading :mod:`ssb_trl.soft_labels.io`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import datasets

from ssb_trl.soft_labels.codec import (
    COMPACT_FORMAT_VERSION,
    LOGPROB_DTYPES,
    SOFT_LABEL_MODES,
    id_dtype_for_vocab,
    is_compact,
)

ID, ANSWER, PROMPT, COMPLETION = "id", "answer", "prompt", "completion"
INPUT_IDS, COMPLETION_MASK = "input_ids", "completion_mask"
TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"

METADATA_FILENAME = "ssb_metadata.json"
_METADATA_MARKER = "ssb_trl_soft_labels"
SAMPLED_FORMAT_VERSION = 3
"""The version written for sampled soft labels (any log-prob dtype)."""
FORMAT_VERSION = SAMPLED_FORMAT_VERSION
"""The newest format this ssb-trl reads (and writes for sampled or compact soft labels)."""
TOPK_FORMAT_VERSION = 1
"""The version written for top-K float log-probs, which every ssb-trl reads."""


def features(
    logprob_dtype: str = "float16", vocab_size: int | None = None, top_k: int | None = None
) -> datasets.Features:
    """Arrow schema of a soft-label dataset as data preparation writes it.

    For compact soft labels (`logprob_dtype="uint8"`) the ids take the narrowest dtype of `vocab_size` (uint32
    when it is not given) and, with `top_k`, each token's K entries are a fixed-size list (no offsets).
    """
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    id_dtype, k = "int32", None
    if is_compact(logprob_dtype):
        id_dtype = id_dtype_for_vocab(vocab_size) if vocab_size is not None else "uint32"
        k = top_k
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features(
        {
            ID: datasets.Value("string"),
            ANSWER: datasets.Value("string"),
            PROMPT: datasets.List(message),
            COMPLETION: datasets.List(message),
            INPUT_IDS: datasets.List(datasets.Value("int32")),
            COMPLETION_MASK: datasets.List(datasets.Value("int8")),
            TEACHER_TOPK_IDS: datasets.List(datasets.List(datasets.Value(id_dtype), length=k or -1)),
            TEACHER_TOPK_LOGPROBS: datasets.List(datasets.List(datasets.Value(logprob_dtype), length=k or -1)),
        }
    )


class SoftLabelError(ValueError):
    """A soft-label dataset breaks the contract; the message names the row and the fix."""


@dataclass
class SoftLabelMetadata:
    """How a soft-label dataset was made; checked at train time."""

    teacher_model: str
    tokenizer_fingerprint: dict
    top_k: int
    temperature: float
    prompt_template_version: str = "unknown"
    source: dict = field(default_factory=dict)
    logprob_dtype: str = "float16"
    format_version: int = TOPK_FORMAT_VERSION
    soft_label_mode: str = "topk"
    """"topk" (the K most probable ids) or "sampled" (N draws; `top_k` is then N); datasets without it are top-K."""
    soft_label_draws: int | None = None
    """N, the draws per token of sampled soft labels; None for top-K."""

    def __post_init__(self):
        if is_compact(self.logprob_dtype):  # readers before version 2 cannot decode the codes
            self.format_version = max(self.format_version, COMPACT_FORMAT_VERSION)
        if self.soft_label_mode not in SOFT_LABEL_MODES:
            raise ValueError(f"soft_label_mode must be one of {SOFT_LABEL_MODES}, got {self.soft_label_mode!r}.")
        if self.sampled and self.soft_label_draws != self.top_k:
            raise ValueError(
                f"sampled soft labels store their N draws as N entries per token: soft_label_draws "
                f"({self.soft_label_draws}) must equal top_k ({self.top_k})."
            )
        if self.soft_label_mode == "sampled":  # readers before version 3 would take the draws for a top-K
            self.format_version = max(self.format_version, SAMPLED_FORMAT_VERSION)

    @property
    def sampled(self) -> bool:
        """Sampled soft labels (an unbiased estimate of the full distribution), not top-K."""
        return self.soft_label_mode == "sampled"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SoftLabelMetadata:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_description(self) -> str:
        """The in-memory carrier: a JSON string for `Dataset.info.description`."""
        return json.dumps({_METADATA_MARKER: self.to_dict()}, sort_keys=True)

    @classmethod
    def from_description(cls, description: str | None) -> SoftLabelMetadata | None:
        """Parse metadata from `Dataset.info.description`; None if it holds none."""
        if not description:
            return None
        try:
            data = json.loads(description)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or _METADATA_MARKER not in data:
            return None
        return cls.from_dict(data[_METADATA_MARKER])


def tokenizer_fingerprint(tokenizer) -> dict:
    """Vocabulary size plus a hash of the token -> id map: two tokenizers that agree here encode alike."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    return {"vocab_size": len(vocab), "sha256": digest.hexdigest()[:16]}

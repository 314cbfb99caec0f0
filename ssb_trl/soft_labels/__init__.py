"""The soft-label format: the contract between the jobs that write soft labels and the trainer that reads them.

Layered, each module importing only the ones above it:

codec    how the two soft-label columns are stored (float, compact 8-bit codes, sampled draws): one encoder,
         one decoder, one rule for "are these codes?"
schema   column names, Arrow features, SoftLabelMetadata, format versions, the tokenizer fingerprint
checks   refuse a dataset, metadata or batch that breaks the format, naming the row and the fix
io       save / load / push (with ssb_metadata.json), convert to compact, truncate; an unfinished job's folder named
teacher  a teacher model's soft labels on given text (teacher-forced top-K or sampled draws)

The names load on first use (``ssb_trl.lazy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "SoftLabelError": "ssb_trl.soft_labels.schema",
    "SoftLabelMetadata": "ssb_trl.soft_labels.schema",
    "compact_soft_label_dataset": "ssb_trl.soft_labels.io",
    "extract_soft_labels": "ssb_trl.soft_labels.teacher",
    "extract_topk_soft_labels": "ssb_trl.soft_labels.teacher",
    "features": "ssb_trl.soft_labels.schema",
    "load_soft_label_dataset": "ssb_trl.soft_labels.io",
    "push_soft_label_dataset_to_hub": "ssb_trl.soft_labels.io",
    "save_soft_label_dataset": "ssb_trl.soft_labels.io",
    "tokenizer_fingerprint": "ssb_trl.soft_labels.schema",
    "validate_soft_label_dataset": "ssb_trl.soft_labels.checks",
}
__all__ = [  # the keys of _EXPORTS, spelled out for tools that read __all__ statically
    "SoftLabelError",
    "SoftLabelMetadata",
    "compact_soft_label_dataset",
    "extract_soft_labels",
    "extract_topk_soft_labels",
    "features",
    "load_soft_label_dataset",
    "push_soft_label_dataset_to_hub",
    "save_soft_label_dataset",
    "tokenizer_fingerprint",
    "validate_soft_label_dataset",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.soft_labels.checks import validate_soft_label_dataset
    from ssb_trl.soft_labels.io import (
        compact_soft_label_dataset,
        load_soft_label_dataset,
        push_soft_label_dataset_to_hub,
        save_soft_label_dataset,
    )
    from ssb_trl.soft_labels.schema import SoftLabelError, SoftLabelMetadata, features, tokenizer_fingerprint
    from ssb_trl.soft_labels.teacher import extract_soft_labels, extract_topk_soft_labels

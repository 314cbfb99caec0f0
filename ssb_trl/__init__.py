"""ssb-trl: Semantic Soft Bootstrapping for Hugging Face TRL.

Training (`SSBConfig`, `SSBTrainer`, `SSBDataCollator`, the loss) and the soft-label format (`ssb_trl.contract`)
are exported here; data preparation lives in `ssb_trl.data`, evaluation in `ssb_trl.eval`.

The names load on first use (as TRL's do): `import ssb_trl.data.grading` to grade one answer, or `ssb-trl
--help`, should not pay for importing torch, transformers, datasets and TRL.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .lazy import lazy_exports

try:
    __version__ = version("ssb-trl")  # pyproject.toml's, as installed: one place to bump
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {  # public name -> the module that defines it
    "DistillationLossSpec": "ssb_trl.loss",
    "SSBConfig": "ssb_trl.config",
    "SSBDataCollator": "ssb_trl.collator",
    "SSBTrainer": "ssb_trl.trainer",
    "SoftLabelError": "ssb_trl.contract",
    "SoftLabelMetadata": "ssb_trl.contract",
    "extract_soft_labels": "ssb_trl.data.teacher",
    "extract_topk_soft_labels": "ssb_trl.data.teacher",
    "load_soft_label_dataset": "ssb_trl.contract",
    "push_soft_label_dataset_to_hub": "ssb_trl.contract",
    "save_soft_label_dataset": "ssb_trl.contract",
    "sparse_distillation_loss": "ssb_trl.loss",
    "tokenizer_fingerprint": "ssb_trl.contract",
    "validate_soft_label_dataset": "ssb_trl.contract",
}
__all__ = [  # the keys of _EXPORTS, spelled out for tools that read __all__ statically
    "DistillationLossSpec",
    "SSBConfig",
    "SSBDataCollator",
    "SSBTrainer",
    "SoftLabelError",
    "SoftLabelMetadata",
    "extract_soft_labels",
    "extract_topk_soft_labels",
    "load_soft_label_dataset",
    "push_soft_label_dataset_to_hub",
    "save_soft_label_dataset",
    "sparse_distillation_loss",
    "tokenizer_fingerprint",
    "validate_soft_label_dataset",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .collator import SSBDataCollator
    from .config import SSBConfig
    from .contract import (
        SoftLabelError,
        SoftLabelMetadata,
        load_soft_label_dataset,
        push_soft_label_dataset_to_hub,
        save_soft_label_dataset,
        tokenizer_fingerprint,
        validate_soft_label_dataset,
    )
    from .data.teacher import extract_soft_labels, extract_topk_soft_labels
    from .loss import DistillationLossSpec, sparse_distillation_loss
    from .trainer import SSBTrainer

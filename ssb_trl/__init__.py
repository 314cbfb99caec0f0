"""ssb-trl: Semantic Soft Bootstrapping for Hugging Face TRL.

What a training user needs is exported here: `SSBConfig`, `SSBTrainer`, `SSBDataCollator`, the loss, and the
soft-label dataset's loaders, metadata and checks (`ssb_trl.soft_labels`). The jobs that write soft-label data
have their own packages (`ssb_trl.prepare`, `ssb_trl.label`), as does evaluation (`ssb_trl.eval`).

The names load on first use (as TRL's do): `import ssb_trl.tasks.grading` to grade one answer, or `ssb-trl
--help`, should not pay for importing torch, transformers, datasets and TRL.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

try:
    __version__ = version("ssb-trl")  # pyproject.toml's, as installed: one place to bump
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {  # public name -> the module that defines it
    "DistillationLossSpec": "ssb_trl.loss",
    "SSBConfig": "ssb_trl.config",
    "SSBDataCollator": "ssb_trl.collator",
    "SSBTrainer": "ssb_trl.trainer",
    "SoftLabelError": "ssb_trl.soft_labels.schema",
    "SoftLabelMetadata": "ssb_trl.soft_labels.schema",
    "load_soft_label_dataset": "ssb_trl.soft_labels.io",
    "push_soft_label_dataset_to_hub": "ssb_trl.soft_labels.io",
    "save_soft_label_dataset": "ssb_trl.soft_labels.io",
    "sparse_distillation_loss": "ssb_trl.loss",
    "tokenizer_fingerprint": "ssb_trl.soft_labels.schema",
    "validate_soft_label_dataset": "ssb_trl.soft_labels.checks",
}
__all__ = [  # the keys of _EXPORTS, spelled out for tools that read __all__ statically
    "DistillationLossSpec",
    "SSBConfig",
    "SSBDataCollator",
    "SSBTrainer",
    "SoftLabelError",
    "SoftLabelMetadata",
    "load_soft_label_dataset",
    "push_soft_label_dataset_to_hub",
    "save_soft_label_dataset",
    "sparse_distillation_loss",
    "tokenizer_fingerprint",
    "validate_soft_label_dataset",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.collator import SSBDataCollator
    from ssb_trl.config import SSBConfig
    from ssb_trl.loss import DistillationLossSpec, sparse_distillation_loss
    from ssb_trl.soft_labels.checks import validate_soft_label_dataset
    from ssb_trl.soft_labels.io import (
        load_soft_label_dataset,
        push_soft_label_dataset_to_hub,
        save_soft_label_dataset,
    )
    from ssb_trl.soft_labels.schema import SoftLabelError, SoftLabelMetadata, tokenizer_fingerprint
    from ssb_trl.trainer import SSBTrainer

"""ssb-trl: Semantic Soft Bootstrapping for Hugging Face TRL."""

from .collator import SSBDataCollator
from .config import SSBConfig
from .loss import DistillationLossSpec, sparse_distillation_loss
from .soft_labels import (
    SoftLabelError,
    SoftLabelMetadata,
    extract_topk_soft_labels,
    load_soft_label_dataset,
    save_soft_label_dataset,
    tokenizer_fingerprint,
    validate_soft_label_dataset,
)
from .trainer import SSBTrainer

__version__ = "0.1.0"

__all__ = [
    "DistillationLossSpec",
    "SSBConfig",
    "SSBDataCollator",
    "SSBTrainer",
    "SoftLabelError",
    "SoftLabelMetadata",
    "extract_topk_soft_labels",
    "load_soft_label_dataset",
    "save_soft_label_dataset",
    "sparse_distillation_loss",
    "tokenizer_fingerprint",
    "validate_soft_label_dataset",
]

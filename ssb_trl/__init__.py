"""ssb-trl: Semantic Soft Bootstrapping for Hugging Face TRL.

Training (`SSBConfig`, `SSBTrainer`, `SSBDataCollator`, the loss) and the soft-label format (`ssb_trl.contract`)
are exported here; data preparation lives in `ssb_trl.data`, evaluation in `ssb_trl.eval`.
"""

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
from .data.teacher import extract_topk_soft_labels
from .loss import DistillationLossSpec, sparse_distillation_loss
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
    "push_soft_label_dataset_to_hub",
    "save_soft_label_dataset",
    "sparse_distillation_loss",
    "tokenizer_fingerprint",
    "validate_soft_label_dataset",
]

"""Offline distillation data: any teacher's soft labels on a prompt/completion dataset (``ssb-trl label``), one
job on :mod:`ssb_trl.jobs`.

The names load on first use (``ssb_trl.lazy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "LabelConfig": "ssb_trl.label.config",
    "LabelSummary": "ssb_trl.label.job",
    "label_dataset": "ssb_trl.label.job",
}
__all__ = ["LabelConfig", "LabelSummary", "label_dataset"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.label.config import LabelConfig
    from ssb_trl.label.job import LabelSummary, label_dataset

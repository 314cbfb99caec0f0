"""SSB data preparation: question/answer pairs -> a soft-label dataset (one job on :mod:`ssb_trl.jobs`).

config      PrepConfig: the question source, the engine, rollout and teacher sampling, the soft labels
stages      rollouts -> pair/hint -> hinted teacher -> hint check, pure functions
hint_gain   the hint's gain: hinted vs unhinted accuracy on the same questions
summary     what a run produced (ssb_summary.json, the logged table)
job         the preparation job: its stages on the run engine, the final dataset (prepare_ssb_data)

The names load on first use (``ssb_trl.lazy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "NoPairsError": "ssb_trl.prepare.job",
    "PrepConfig": "ssb_trl.prepare.config",
    "PrepSummary": "ssb_trl.prepare.summary",
    "prepare_ssb_data": "ssb_trl.prepare.job",
}
__all__ = ["NoPairsError", "PrepConfig", "PrepSummary", "prepare_ssb_data"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.prepare.config import PrepConfig
    from ssb_trl.prepare.job import NoPairsError, prepare_ssb_data
    from ssb_trl.prepare.summary import PrepSummary

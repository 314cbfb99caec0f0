"""Questions, answers and prompts, shared by preparation and evaluation.

sources   QuestionSource: Hub / local file / folder / reasoning-gym / presets -> QAExample (with its scorer)
grading   final-answer extraction + Math-Verify (thread-safe)
prompts   the student prompt and the hinted teacher's formats (versioned; built-in or a template file)
steps     written arithmetic steps of an answer (a op b = c), checked

The names load on first use (``ssb_trl.lazy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssb_trl.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it
    "QAExample": "ssb_trl.tasks.sources",
    "QuestionSource": "ssb_trl.tasks.sources",
    "load_questions": "ssb_trl.tasks.sources",
}
__all__ = ["QAExample", "QuestionSource", "load_questions"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from ssb_trl.tasks.sources import QAExample, QuestionSource, load_questions

"""Final-answer extraction and verification.

Extraction (:func:`extract_final_answer`) looks, in this order, for
1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled; also ``\\boxed 5``;
2. the last ``<answer>...</answer>`` block (the reasoning-gym convention);
3. the last "final answer is X" / "answer: X" / "answer is X" phrase (X up to the end of its sentence,
   at most ``MAX_PHRASE_WORDS`` words, so prose such as "the answer is the one we want" is skipped);
4. the last number in the text (``1,000``, ``-3.5``, ``2/3``).
Steps 2-4 are fallbacks for models that ignore the ``\\boxed{}`` instruction (small ones often do);
pass ``fallbacks=False`` to accept only a boxed answer.

Verification (:func:`verify_answer`) uses Math-Verify, so ``1,000`` equals ``1000``, ``$5`` equals ``5``
and ``\\frac{1}{2}`` equals ``0.5``. Math-Verify guards its sympy calls with ``signal.alarm`` timeouts,
which only work in the main thread; off the main thread we disable them (``parsing_timeout=None``,
``timeout_seconds=None``), so grading is safe in worker threads and data-loader workers.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any, Protocol

logger = logging.getLogger(__name__)

MATH_VERIFY_TIMEOUT_S = 5
"""Per-call Math-Verify timeout on the main thread (disabled elsewhere: signals need the main thread)."""

MAX_PHRASE_WORDS = 5

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s+)")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|=|:)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_NUMBER_WITH_UNIT_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*[A-Za-z][A-Za-z .]*$")


class Gradable(Protocol):
    """What grading needs of a question (``ssb_trl.data.sources.QAExample``): its gold answer, and its own
    scorer where it has one. A protocol, so that grading imports nothing from the sources."""

    answer: str
    scorer: dict[str, Any] | None

    def score(self, predicted: str) -> float: ...


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` with balanced braces, or ``\\boxed X``."""
    result: str | None = None
    for match in _BOX_RE.finditer(text):
        start = match.end()
        if match.group(1) == "{":
            depth = 1
            i = start
            while i < len(text) and depth:
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                i += 1
            if depth == 0:
                result = text[start : i - 1]
        else:
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                result = token.group(0)
    return result.strip() if result is not None else None


def _clean_phrase(value: str) -> str:
    """Trim a free-text answer phrase: markdown emphasis, math delimiters, a trailing full stop."""
    value = value.strip().strip("*").strip()
    boxed = _last_boxed(value)
    if boxed is not None:
        return boxed
    value = re.sub(r"[.\s]+$", "", value).strip("$").strip()
    value = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", value).strip()
    return value.strip("*").strip()


def extract_final_answer(text: str, fallbacks: bool = True) -> str | None:
    """Return the model's final answer in ``text`` (see the module docstring for the order), or ``None``."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    if not fallbacks:
        return None
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return _clean_phrase(tags[-1])
    phrases = _ANSWER_PHRASE_RE.findall(text)
    for phrase in reversed(phrases):
        first_sentence = re.split(r"\.\s", phrase.splitlines()[0] if phrase else "", maxsplit=1)[0]
        cleaned = _clean_phrase(first_sentence)
        if cleaned and len(cleaned.split()) <= MAX_PHRASE_WORDS:
            return cleaned
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1].replace(" ", "")
    return None


def parse_gold_answer(raw: str | int | float) -> str:
    """Normalise a dataset's gold answer: GSM8K ``... #### 42`` -> ``42``; MATH solutions -> last boxed."""
    text = str(raw).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    return text


def normalize_answer(value: str) -> str:
    """Light textual cleanup that Math-Verify does not do itself (currency, thousands separators, units)."""
    value = value.strip()
    value = _TEXT_WRAP_RE.sub(r"\1", value)
    value = value.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "")
    value = _THOUSANDS_RE.sub("", value)
    value = re.sub(r"\.\s*$", "", value).strip()
    unit = _NUMBER_WITH_UNIT_RE.match(value)
    if unit:
        value = unit.group(1)
    return value


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse(expression: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(expression, parsing_timeout=timeout))


def verify_answer(predicted: str | None, gold: str) -> bool:
    """True when ``predicted`` is mathematically equal to ``gold`` (Math-Verify, plus light normalisation)."""
    if predicted is None or not str(predicted).strip():
        return False
    predicted, gold = str(predicted), str(gold)
    pred_norm, gold_norm = normalize_answer(predicted), normalize_answer(gold)
    if pred_norm == gold_norm and pred_norm:
        return True
    from math_verify import verify

    timeout = _timeout()
    gold_parsed = _parse(f"${gold_norm}$", timeout) or _parse(gold_norm, timeout)
    if not gold_parsed:
        logger.debug("Math-Verify could not parse gold answer %r", gold)
        return False
    for candidate in dict.fromkeys([pred_norm, predicted]):
        for form in (f"\\boxed{{{candidate}}}", candidate):
            parsed = _parse(form, timeout)
            if parsed and verify(list(gold_parsed), list(parsed), timeout_seconds=timeout):
                return True
    return False


def grade(completion_text: str, example: Gradable, fallbacks: bool = True) -> bool:
    """Is ``completion_text`` a correct answer to ``example``?

    Examples that carry their own scorer (reasoning-gym tasks) are judged by it, on the extracted final
    answer; all others by :func:`verify_answer` against the gold answer.
    """
    predicted = extract_final_answer(completion_text, fallbacks=fallbacks)
    if predicted is None:
        return False
    if example.scorer:
        return example.score(predicted) >= 1.0 - 1e-9
    return verify_answer(predicted, example.answer)

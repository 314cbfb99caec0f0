"""Final-answer extraction and verification.

Extraction (:func:`extract_final_answer`) looks, in this order, for
1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled; also ``\\boxed 5``. When the last
   box is never closed the completion was cut off mid-answer, and there is no answer (no fallback);
2. the last ``<answer>...</answer>`` block (the reasoning-gym convention);
3. the last "final answer is X" / "answer: X" / "answer is X" phrase (X up to the end of its sentence,
   at most ``MAX_PHRASE_WORDS`` words, so prose such as "the answer is the one we want" is skipped);
4. the last number in the text (``1,000``, ``-3.5``, ``2/3``, ``1e3``), only when the text commits to it
   (:func:`_committed_last_number`): not when it ends a bare list of numbers ("1 2 3 ... 12", "11, 12",
   "11 or 12": a dump or a choice between candidates), nor when its sentence hedges ("maybe", "perhaps",
   "I don't know", ...). "3 + 4 = 7" and "so she has 7 apples left" are still credited.
Steps 2-4 are fallbacks for models that ignore the ``\\boxed{}`` instruction (small ones often do), and must
not reward a model for listing numbers or guessing between them; pass ``fallbacks=False`` to accept only a
boxed answer. Only the last ``MAX_TEXT_CHARS`` characters of a completion are read, in linear time.

Verification (:func:`verify_answer`) compares the *value* of the whole extracted answer with the gold:
``1,000`` equals ``1000``, ``1e3``, ``1E+03`` and ``1.0e3`` equal ``1000`` (exactly: ``1e+16`` is not
``10000000000000001``), ``\\$18`` equals ``18``, ``x = 3`` equals ``3``, ``\\frac{1}{2}`` equals ``0.5``
and ``18 \\div 2`` equals ``9``, but ``2 \\times 5``, ``5x`` or ``5t`` never equal ``5``. Textual
normalisation and plain numbers are decided in-process (microseconds); everything else goes to Math-Verify,
which parses the answer as one LaTeX expression (never a number picked out of it) with its own unit
stripping off (it takes ``t``, ``h``, ``m``... for units, so ``5t`` would equal ``5``; we strip only unit
*words*, see :func:`normalize_answer`).

Math-Verify runs in a child process with a hard time limit (:mod:`ssb_trl.tasks.verify_worker`), so grading is
thread-safe and every call returns in bounded time.

:func:`check_gold_answers` warns, once per source, about gold answers Math-Verify cannot parse: only an
exact text match can grade an answer to them correct.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

from ssb_trl.tasks.verify_worker import Undecided, ask_math_verify

logger = logging.getLogger(__name__)

MAX_PHRASE_WORDS = 5
MAX_TEXT_CHARS = 200_000
"""Extraction reads only this many characters at the end of a completion (the final answer is there)."""
MAX_ANSWER_CHARS = 1_000
"""Answers or golds longer than this are compared by exact text match only, never parsed."""

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s+)")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|=|:)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+\b|\s*/\s*\d+)?")
# Between the last two numbers of a text, only list separators: the last is one of several candidates.
_LIST_GAP_RE = re.compile(r"[\s,;&]*(?:(?:and|or)\b[\s,;&]*)?", re.IGNORECASE)
# Words that make the sentence of the last number a guess, not an answer.
_HEDGE_RE = re.compile(
    r"\b(?:maybe|perhaps|possibly|probably|guess|unsure|not\s+sure|(?:don['’]?t|do\s+not|can['’]?t|cannot)"
    r"\s+(?:know|tell|say|be\s+sure))\b",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)|\n")
_THOUSANDS_RE = re.compile(r"(?<=\d)(?:,|\{,\}|\\,)(?=\d{3}(?!\d))")
_LATEX_SPACE_RE = re.compile(r"\\[,;: ]|\\q?quad\b|~")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# A number followed by unit *words* ("18 dollars", "10 cm^2"): a space, then at least two letters, so that
# "5x" or "5 t" (a number times a variable) are left for Math-Verify to read as products.
_NUMBER_WITH_UNIT_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s+[A-Za-z]{2,}[A-Za-z .]*(?:\^\{?[23]\}?)?$")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+|[eE][-+]?\d+)?")
MAX_EXPONENT = 400
"""Scientific notation (``1e3``) is read exactly up to this exponent; beyond, the answer is left to Math-Verify."""
_EXPONENT_NUMBER_RE = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d+)")
_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")


class Gradable(Protocol):
    """What grading needs of a question (``ssb_trl.tasks.sources.QAExample``): its gold answer, and its own
    scorer where it has one. A protocol, so that grading imports nothing from the sources (and this file
    runs alone as the Math-Verify worker)."""

    id: str
    answer: str
    scorer: dict[str, Any] | None

    def score(self, predicted: str) -> float: ...


def _matching_braces(text: str) -> dict[int, int]:
    """Map each ``{`` that gets closed to the index of its ``}``, in one linear pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            pairs[stack.pop()] = index
    return pairs


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces handled) or ``\\boxed X``;
    ``None`` when there is none or the last one is never closed (a completion cut off mid-answer)."""
    last = next(iter(collections.deque(_BOX_RE.finditer(text), maxlen=1)), None)
    if last is None:
        return None
    start = last.end()
    if last.group(1) != "{":
        token = re.match(r"[^\s$]+", text[start:])
        return token.group(0).strip() if token else None
    end = _matching_braces(text).get(start - 1)
    return text[start:end].strip() if end is not None else None


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
    text = text[-MAX_TEXT_CHARS:]
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    if not fallbacks or (boxed is None and _BOX_RE.search(text)):
        return None  # an unclosed last box: the answer was cut off; a number in it or before it is no answer
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return _clean_phrase(tags[-1])
    phrases = _ANSWER_PHRASE_RE.findall(text)
    for phrase in reversed(phrases):
        first_sentence = re.split(r"\.\s", phrase.splitlines()[0] if phrase else "", maxsplit=1)[0]
        cleaned = _clean_phrase(first_sentence)
        if cleaned and len(cleaned.split()) <= MAX_PHRASE_WORDS:
            return cleaned
    return _committed_last_number(text)


def _committed_last_number(text: str) -> str | None:
    """The last number of ``text`` when the text commits to it as its answer, else None.

    Small models rarely box their answers, so the last number is a fallback; but a text that ends with several
    candidates or a guess has given no answer, and crediting it would reward listing numbers (a model that
    writes "1 2 3 ... 12" would be right for every gold up to 12) or hedging ("maybe 11 or 12"). The rule:
    no number when only list separators (spaces, commas, "and", "or") stand between the last two numbers, or
    when the sentence holding the last number hedges (:data:`_HEDGE_RE`). Any other word or sign between them
    commits: "3 + 4 = 7", "we get 3, then 5, and at last 2/3", "so 12 apples are left".
    """
    matches = collections.deque(_NUMBER_RE.finditer(text), maxlen=2)
    if not matches:
        return None
    last = matches[-1]
    if len(matches) == 2 and _LIST_GAP_RE.fullmatch(text[matches[0].end() : last.start()]):
        return None
    sentence_start = max((m.end() for m in _SENTENCE_END_RE.finditer(text, 0, last.start())), default=0)
    sentence_end = next(_SENTENCE_END_RE.finditer(text, last.end()), None)
    if _HEDGE_RE.search(text, sentence_start, sentence_end.start() if sentence_end else len(text)):
        return None
    return last.group(0).replace(" ", "")


def parse_gold_answer(raw: str | int | float) -> str:
    """Normalise a dataset's gold answer: GSM8K ``... #### 42`` -> ``42``; MATH solutions -> last boxed;
    a number in scientific notation (a JSON ``1e3``, or ``1e+16`` as Python writes the float 1e16) -> its exact
    plain decimal (``1000``, ``10000000000000000``), as the teacher's hint and the reports then show it."""
    text = str(raw).strip()
    plain = _plain_decimal(text)
    if plain is not None:
        return plain
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    return text


def normalize_answer(value: str) -> str:
    """Light textual cleanup that Math-Verify does not do itself (currency, thousands separators, unit words)."""
    value = value.strip()
    value = _TEXT_WRAP_RE.sub(r"\1", value)
    value = value.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "")
    value = _THOUSANDS_RE.sub("", value)
    value = _LATEX_SPACE_RE.sub(" ", value)
    value = re.sub(r"\.\s*$", "", value).strip()
    unit = _NUMBER_WITH_UNIT_RE.match(value)
    if unit:
        value = unit.group(1)
    return value


def _plain_decimal(text: str) -> str | None:
    """``1e3`` -> ``1000``, ``-1.5E-3`` -> ``-0.0015``, exactly (no float); None for any other text."""
    match = _EXPONENT_NUMBER_RE.fullmatch(text)
    if match is None or abs(int(match.group(2))) > MAX_EXPONENT:
        return None
    value = format(Decimal(text), "f")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return "0" if value in ("-0", "+0") else value


def _as_number(value: str) -> Fraction | None:
    """``value`` as an exact number when it is a plain one (``-3``, ``2.50``, ``1/2``, ``\\frac{1}{2}``, ``1e3``)."""
    frac = _FRAC_RE.match(value)
    if frac:
        sign, numerator, denominator = frac.groups()
        value = f"{sign}{numerator}/{denominator}"
    if not _PLAIN_NUMBER_RE.fullmatch(value):
        return None
    exponent = _EXPONENT_NUMBER_RE.fullmatch(value)
    if exponent is not None and abs(int(exponent.group(2))) > MAX_EXPONENT:
        return None  # 1e1000000000 would take forever to build exactly
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        return None


def _balanced(text: str) -> bool:
    """Every brace closed, so wrapping ``text`` in ``\\boxed{}`` cannot end the box early."""
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


@functools.lru_cache(maxsize=8192)
def _math_verify_equal(gold: str, answer: str) -> bool:
    """Math-Verify's verdict on two normalised answers (cached; :class:`Undecided` is raised, not cached)."""
    return ask_math_verify(["verify", gold, answer])


@functools.lru_cache(maxsize=8192)
def _math_verify_parses(text: str) -> bool:
    return ask_math_verify(["parse", text])


def _parseable(text: str) -> bool:
    return bool(text) and len(text) <= MAX_ANSWER_CHARS and _balanced(text)


def verify_answer(predicted: str | None, gold: str) -> bool:
    """True when ``predicted`` has the value of ``gold``; False when it differs or that cannot be decided in time."""
    if predicted is None or not str(predicted).strip():
        return False
    pred_norm, gold_norm = normalize_answer(str(predicted)), normalize_answer(str(gold))
    if pred_norm == gold_norm and pred_norm:
        return True
    pred_number, gold_number = _as_number(pred_norm), _as_number(gold_norm)
    if pred_number is not None and gold_number is not None:
        if pred_number == gold_number:
            return True
        if pred_number.denominator == 1 and gold_number.denominator == 1:
            return False  # two different integers; decimals and fractions go on to Math-Verify's rounding
    if not (_parseable(pred_norm) and _parseable(gold_norm)):
        return False
    try:
        return _math_verify_equal(gold_norm, pred_norm)
    except Undecided as exc:
        logger.warning("Grading %r against %r counted as not correct: %s", pred_norm[:80], gold_norm[:80], exc)
        return False


_warned_sources: set[str] = set()


def check_gold_answers(examples: Iterable[Gradable], source: str) -> int:
    """Count gold answers Math-Verify cannot parse; warn once per ``source`` when there are any.

    Answers to such a question can only be graded correct by an exact text match, so a silent failure
    here would quietly lower every accuracy figure. Examples with their own scorer are skipped.
    """
    failed, total = [], 0
    for example in examples:
        if example.scorer:
            continue
        total += 1
        gold = normalize_answer(str(example.answer))
        if _as_number(gold) is not None:
            continue
        try:
            parsed = _parseable(gold) and _math_verify_parses(gold)
        except Undecided:
            parsed = False
        if not parsed:
            failed.append(example)
    if failed and source not in _warned_sources:
        _warned_sources.add(source)
        shown = ", ".join(f"{example.id}: {str(example.answer)[:60]!r}" for example in failed[:3])
        logger.warning(
            "%d of %d gold answers from %s cannot be parsed by Math-Verify (e.g. %s); answers to them are "
            "graded correct only on an exact text match",
            len(failed),
            total,
            source,
            shown,
        )
    return len(failed)


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

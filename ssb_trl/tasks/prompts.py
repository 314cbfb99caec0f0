"""Student and hinted-teacher prompts (docs/METHOD.md steps 1 and 4), versioned.

The wording is ours. Any change to the student prompt must bump :data:`PROMPT_TEMPLATE_VERSION`, and any change
to a hint format's text its :attr:`HintFormat.version`: both are recorded in every soft-label dataset, because soft
labels taken under one prompt do not transfer to another.

SSB's premise is that the model, shown hints, answers better than alone. The paper's hint (``contrastive``: a
correct and an incorrect attempt with instructions) is more than a small model can follow (docs/experiment), so the
hint is a setting (``--teacher_hint``): a built-in format of :data:`HINT_FORMATS` or a template file of the user's.
"""

from __future__ import annotations

import hashlib
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE_VERSION = "ssb-prompts-v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are a skilled math tutor. Work through the problem one step at a time, explaining each step, "
    "and finish with the final answer written inside \\boxed{}."
)

TEACHER_INSTRUCTIONS = """Below is a problem together with two answers written by students. An automatic checker, \
which compared only the final boxed answers, found that the first answer is right and the second one is wrong.

Problem:
{question}

Answer judged correct:
{correct}

Answer judged incorrect:
{incorrect}

Now write your own solution to the problem. Reason clearly, one step at a time, and point out the mistakes \
a student could easily make along the way so the reader learns to avoid them. Write it as a fresh, \
self-contained solution: do not say or hint that you were shown other answers. End with the final answer \
inside \\boxed{{}}; it must agree with the answer judged correct."""


CONTRASTIVE_SHORT = """Problem:
{question}

A correct answer:
{correct}

A wrong answer:
{incorrect}

Solve the problem step by step in your own words. End with the final answer inside \\boxed{{}}."""

CORRECT_SOLUTION = """Problem:
{question}

Here is a correct solution:
{correct}

Write a clear step-by-step solution of your own. End with the final answer inside \\boxed{{}}."""

ANSWER_ONLY = """Problem:
{question}

The correct final answer is {answer}. Show step by step how to get it, and end with the final answer inside \\boxed{{}}."""

Messages = list[dict[str, Any]]

# The fields a hint template may use (str.format syntax; literal braces are doubled: \\boxed{{}}).
HINT_FIELDS = {
    "question": "the problem, as the student sees it",
    "correct": "a rollout graded correct",
    "incorrect": "a rollout graded wrong (with an answer)",
    "answer": "the verified gold answer",
}


@dataclass(frozen=True)
class HintFormat:
    """How the hinted teacher is prompted: a named, versioned ``str.format`` template over :data:`HINT_FIELDS`."""

    name: str
    version: str
    template: str

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None)

    @property
    def needs_correct(self) -> bool:
        """True when the template shows a correct rollout (the question needs one)."""
        return "correct" in self.fields

    @property
    def needs_incorrect(self) -> bool:
        """True when the template shows a wrong rollout (the question needs one)."""
        return "incorrect" in self.fields

    def messages(
        self,
        question: str,
        correct: str | None = None,
        incorrect: str | None = None,
        answer: str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> Messages:
        """Chat messages for the hinted teacher; only the fields the template uses must be given."""
        values = {"question": question, "correct": correct, "incorrect": incorrect, "answer": answer}
        missing = sorted(name for name in self.fields if values[name] is None)
        if missing:
            raise ValueError(f"hint format {self.name!r} needs {', '.join(missing)}")
        content = self.template.format(**{name: str(values[name]).strip() for name in self.fields})
        return _with_system(system_prompt, content)


def _builtin(name: str, template: str, revision: int = 1) -> HintFormat:
    return HintFormat(name, f"{name}-v{revision}", template)


HINT_FORMATS: dict[str, HintFormat] = {
    fmt.name: fmt
    for fmt in (
        _builtin("contrastive", TEACHER_INSTRUCTIONS),  # the paper's: a right and a wrong attempt, long instructions
        _builtin("contrastive_short", CONTRASTIVE_SHORT),  # the same two attempts, a few plain words
        _builtin("correct_solution", CORRECT_SOLUTION),  # only the correct attempt, as a reference
        _builtin("answer_only", ANSWER_ONLY),  # only the verified final answer (STaR's rationalisation)
    )
}
DEFAULT_HINT_FORMAT = "contrastive"


_warned_hints: set[str] = set()


def load_hint_format(spec: str) -> HintFormat:
    """A built-in format by name, or a template file (UTF-8 text, ``str.format`` fields of :data:`HINT_FIELDS`).

    A file's version is the digest of its text, so editing it in place is seen as a new hint on resume.
    """
    if spec in HINT_FORMATS:
        return HINT_FORMATS[spec]
    path = Path(spec)
    allowed = ", ".join("{" + name + "}" for name in HINT_FIELDS)
    fix = f"pass one of {', '.join(HINT_FORMATS)} or a template file with the fields {allowed}"
    if not path.is_file():
        raise ValueError(f"teacher_hint {spec!r} is neither a built-in hint format nor a file: {fix}")
    try:
        template = path.read_text(encoding="utf-8")
        parsed = list(string.Formatter().parse(template))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"hint template {spec} cannot be used ({exc}); it must be UTF-8 text in str.format syntax, with literal "
            "braces doubled (\\boxed{{}})"
        ) from exc
    for _, name, format_spec, conversion in parsed:
        if name is not None and name not in HINT_FIELDS:
            raise ValueError(
                f"hint template {spec} uses the field {{{name}}}; allowed: "
                + ", ".join(f"{{{field}}} ({meaning})" for field, meaning in HINT_FIELDS.items())
                + ". Double literal braces: \\boxed{{}}"
            )
        if name is not None and (format_spec or conversion):
            written = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{format_spec}" if format_spec else "")
                + "}"
            )
            raise ValueError(
                f"hint template {spec} writes {written}: a field is shown as it is, with no conversion (!r, !s) or "
                f"format (:...); write {{{name}}}"
            )
    hint = HintFormat(
        f"file:{path.name}", "file-sha256:" + hashlib.sha256(template.encode()).hexdigest()[:16], template
    )
    if "question" not in hint.fields:
        raise ValueError(f"hint template {spec} never shows the problem: add {{question}}")
    if hint.fields == {"question"} and hint.version not in _warned_hints:  # load_hint_format runs per question
        _warned_hints.add(hint.version)
        logger.warning(
            "Hint template %s shows only {question}: the teacher then sees nothing the student does not, so its "
            "soft labels carry no hint (SSB's premise). Add a hint field: %s",
            spec,
            ", ".join(f"{{{field}}} ({meaning})" for field, meaning in HINT_FIELDS.items() if field != "question"),
        )
    return hint


def _with_system(system_prompt: str | None, user_content: str) -> Messages:
    messages: Messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_content})
    return messages


def student_messages(question: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> Messages:
    """Chat messages the student sees: the system prompt and the bare question (no hints).

    Pass ``system_prompt=None`` for models whose chat template has no system role.
    """
    return _with_system(system_prompt, question.strip())


def teacher_messages(
    question: str,
    correct_answer_text: str,
    incorrect_answer_text: str,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Messages:
    """Chat messages for the paper's hinted teacher (``contrastive``): one correct and one incorrect answer."""
    return HINT_FORMATS["contrastive"].messages(
        question, correct=correct_answer_text, incorrect=incorrect_answer_text, system_prompt=system_prompt
    )


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The special tokens' strings of ``tokenizer`` (``<|im_start|>``, ``<|im_end|>``, ...), longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {str(token) for token in getattr(tokenizer, "all_special_tokens", ())}
    found |= {str(token.content) for token in decoder.values() if getattr(token, "special", False)}
    return tuple(sorted((token for token in found if token), key=len, reverse=True))


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as text: a special token's string in it (``<|im_end|>``) stays characters."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [int(token) for token in ids]


def completion_text_ids(tokenizer: Any, text: str, end_of_turn: int) -> list[int]:
    """A written completion's tokens, ending with the ``end_of_turn`` token (the student learns to stop).

    The text is read as text (see :func:`chat_prompt_ids`), except that a completion ending with the end-of-turn
    token's own string (a dataset exported through the chat template) ends its turn there, as it always did.
    """
    marker = tokenizer.convert_ids_to_tokens(end_of_turn)
    if isinstance(marker, str) and marker and text.endswith(marker):
        text = text[: -len(marker)]
    return [*text_ids(tokenizer, text), end_of_turn] if text else [end_of_turn]


def continues_final_message(messages: Messages) -> bool:
    """Whether a prompt ends with an assistant message that its completion continues, as TRL renders such prompts
    (``trl.data_utils.apply_chat_template``: ``continue_final_message`` for a last assistant message, a new
    assistant turn after a user or tool message)."""
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"


def _template_kwargs(messages: Messages) -> dict[str, bool]:
    continued = continues_final_message(messages)
    return {"add_generation_prompt": not continued, "continue_final_message": continued}


def chat_prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the assistant's answer.

    The template already contains any special tokens it wants, so nothing else is added. As in TRL, a prompt
    whose last message is the assistant's is continued (that message stays open, and the answer goes on from its
    text); any other prompt ends with the template's generation prompt (a new assistant turn). Every engine and
    both sides of a soft-label row (student and teacher) build their prompt ids here, so they agree.

    A message whose text holds a special token's string (a question with ``<|im_end|>\\n<|im_start|>assistant``
    in it) keeps it as text: tokenized as the characters it is, never as the token. Tokenizing the rendered chat
    as a whole would end the user's turn there and forge an assistant turn the model never wrote (and teach the
    student from a prompt it never sees). Escaping rather than refusing, because the same texts reach this
    point from every command (questions in prepare and evaluate, prompts in label) and from the model itself
    (rollouts quoted in the teacher's hint): refusing would stop a long preparation on a rollout that spelt
    out a token, and the text is what the user or the model wrote. The template's own special tokens stay
    tokens; prompts without such strings are tokenized exactly as before. Where a tokenizer cannot keep a
    special token's string as text (its segments do not tokenize as the whole does), the message is refused,
    naming the token.
    """
    specials = special_token_strings(tokenizer)
    if specials and any(special in text for text in _message_texts(messages) for special in specials):
        return _escaped_chat_prompt_ids(tokenizer, messages, specials)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **_template_kwargs(messages))
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(token) for token in ids]


def _message_texts(messages: Messages) -> list[str]:
    """Every text of ``messages``: string contents and the ``text`` of content parts."""
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                texts.append(text)
    return texts


def _map_texts(messages: Messages, change: Any) -> Messages:
    """``messages`` with ``change`` applied to every text (see :func:`_message_texts`)."""

    def part(value: Any) -> Any:
        if isinstance(value, str):
            return change(value)
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            return {**value, "text": change(value["text"])}
        return value

    mapped = []
    for message in messages:
        if isinstance(message, dict) and "content" in message:
            content = message["content"]
            message = {
                **message,
                "content": [part(p) for p in content] if isinstance(content, list) else part(content),
            }
        mapped.append(message)
    return mapped


def _escaped_chat_prompt_ids(tokenizer: Any, messages: Messages, specials: tuple[str, ...]) -> list[int]:
    """:func:`chat_prompt_ids` for messages holding special tokens' strings: those stay text.

    The texts' special strings are swapped for placeholders, the chat is rendered, and the rendering is cut at
    the template's special tokens (as a tokenizer does before tokenizing the text between them); each piece is
    tokenized as text with the special strings put back.
    """
    placeholders = {special: f"\ue000{index}\ue001" for index, special in enumerate(specials)}
    pattern = re.compile("|".join(re.escape(special) for special in specials))
    rendered = tokenizer.apply_chat_template(
        _map_texts(messages, lambda text: pattern.sub(lambda m: placeholders[m.group(0)], text)),
        tokenize=False,
        **_template_kwargs(messages),
    )
    restore = re.compile("|".join(re.escape(placeholder) for placeholder in placeholders.values()))
    originals = {placeholder: special for special, placeholder in placeholders.items()}

    def pieces_ids(text: str, keep: bool) -> list[int]:
        ids: list[int] = []
        position = 0
        for match in pattern.finditer(text):  # the template's own special tokens
            piece = text[position : match.start()]
            piece = restore.sub(lambda m: originals[m.group(0)] if keep else "", piece)
            ids += text_ids(tokenizer, piece) if piece else []
            ids.append(int(tokenizer.convert_tokens_to_ids(match.group(0))))
            position = match.end()
        piece = restore.sub(lambda m: originals[m.group(0)] if keep else "", text[position:])
        return ids + (text_ids(tokenizer, piece) if piece else [])

    # The piece-by-piece tokenization must be the tokenizer's own (it is for byte-level BPE tokenizers: they cut
    # at special tokens first), and special strings must come out as text: checked, else refused.
    without = restore.sub("", rendered)
    whole = [int(token) for token in tokenizer(without, add_special_tokens=False)["input_ids"]]
    used = [special for special in specials if any(special in text for text in _message_texts(messages))]
    special_ids = {int(tokenizer.convert_tokens_to_ids(special)) for special in used}
    if pieces_ids(without, keep=False) != whole or any(special_ids & set(text_ids(tokenizer, s)) for s in used):
        roles = [
            str(message.get("role"))
            for message in messages
            if any(s in text for text in _message_texts([message]) for s in used)
        ]
        raise ValueError(
            f"a {'/'.join(dict.fromkeys(roles))} message holds {', '.join(repr(s) for s in used)}, a special token of "
            "the chat template, and this tokenizer cannot keep it as plain text: it would end the turn there and "
            "forge another. Remove it from the text (or write it differently)."
        )
    return pieces_ids(rendered, keep=True)

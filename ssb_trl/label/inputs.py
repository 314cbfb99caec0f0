"""The input of ``ssb-trl label``: TRL's conversational and prompt-completion rows, read, checked and tokenized.

Accepted, as TRL's SFTTrainer takes them (``trl.data_utils``):

* prompt-completion rows: ``prompt`` a list of messages (or a string: one user message), ``completion`` one
  assistant message (or a string); without a ``completion`` column the teacher writes every completion;
* conversational language-modeling rows: ``messages``, a conversation. Its last message, when it is the
  assistant's, is the completion and the turns before it the prompt; a conversation that ends with a user or tool
  message is a prompt whose completion the teacher writes (as for prompt-only rows), so one dataset may mix both.

As in TRL, a prompt whose last message is the assistant's is continued (``continue_final_message``): the completion
goes on from that message's text; after a user or tool message it starts a new assistant turn; any other last role
is refused (TRL: "Invalid role in the last message"). The teacher may see another prompt than the student (a
``teacher_prompt`` column, or ``--teacher_system_prompt``); each row's ``input_ids`` are the *student's* prompt plus
the completion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import datasets

from ssb_trl.jobs.rows import end_of_turn_id
from ssb_trl.label.config import LabelConfig
from ssb_trl.soft_labels.schema import ANSWER, COMPLETION, ID, PROMPT, tokenizer_fingerprint
from ssb_trl.storage import load_rows
from ssb_trl.tasks.prompts import Messages, chat_prompt_ids, completion_text_ids, continues_final_message

TEACHER_PROMPT = "teacher_prompt"
MESSAGES = "messages"
LAST_ROLES = ("user", "tool", "assistant")
"""The roles TRL takes for a prompt's last message: after user and tool a new assistant turn starts; an assistant
message is continued."""
FORMATS_ACCEPTED = (
    "TRL's prompt-completion format: a 'prompt' column (a list of chat messages {'role', 'content'}, or a string) "
    "and a 'completion' column (a list with one assistant message, or a string; without it, the teacher writes the "
    "completions); or TRL's conversational format: a 'messages' column (a conversation whose last assistant "
    "message is the completion; a conversation ending with a user message is completed by the teacher). An optional "
    "'teacher_prompt' column (same form as 'prompt') is what the teacher sees instead of the student's prompt; "
    "optional 'id' and 'answer' columns are kept"
)


@dataclass
class LabelExample:
    """One input row, checked: the student's and the teacher's prompts and the completion (None: to generate)."""

    id: str
    prompt: Messages
    teacher_prompt: Messages
    completion: str | None
    answer: str = ""


# --------------------------------------------------------------------------------------------------
# Reading and checking the input


def _messages(value: Any, column: str, row_id: str) -> Messages:
    """A prompt as chat messages: a list of {'role', 'content'} as given, a string as one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"row {row_id!r}: {column!r} is an empty string; give every row a prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        messages = []
        for message in value:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(
                    f"row {row_id!r}: {column!r} holds {message!r}, not a chat message with a string 'role' and "
                    f"'content'. Accepted: {FORMATS_ACCEPTED}."
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return messages
    raise ValueError(
        f"row {row_id!r}: {column!r} is {value!r}; it must be a non-empty list of chat messages or a string. "
        f"Accepted: {FORMATS_ACCEPTED}."
    )


def _check_last_role(messages: Messages, column: str, row_id: str) -> None:
    """TRL's rule for a prompt's last message (``Invalid role in the last message``), said with the row."""
    role = messages[-1]["role"]
    if role not in LAST_ROLES:
        raise ValueError(
            f"row {row_id!r}: the last message of its {column!r} has the role {role!r}; a prompt must end with a "
            "'user' or 'tool' message (the completion starts a new assistant turn) or an 'assistant' message (the "
            "completion continues it), as in TRL. Fix that message's role"
        )


def _completion_text(value: Any, row_id: str) -> str | None:
    """A completion's text (one assistant message, or a string); None for an empty one (refused by the caller)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = value[0]
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            raise ValueError(
                f"row {row_id!r}: 'completion' is {message!r}; it must be one message with role 'assistant' and a "
                "string 'content' (the answer the soft labels are taken on)"
            )
        value = message["content"]
    elif isinstance(value, list):
        raise ValueError(
            f"row {row_id!r}: 'completion' holds {len(value)} messages; ssb-trl label takes one assistant message per "
            "row (soft labels are taken on one answer). Put earlier turns in 'prompt'."
        )
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"row {row_id!r}: 'completion' is {value!r}; give one assistant message or a string")
    return value


def _split_conversation(value: Any, row_id: str) -> tuple[Messages, str | None]:
    """A ``messages`` row as (prompt, completion): its last assistant message is the completion; a conversation
    ending otherwise is all prompt (the teacher writes the completion). An empty last assistant message is ``""``."""
    conversation = _messages(value, MESSAGES, row_id)
    if conversation[-1]["role"] != "assistant":
        return conversation, None
    if len(conversation) == 1:
        raise ValueError(
            f"row {row_id!r}: 'messages' holds only an assistant message; the completion needs a prompt before it "
            "(a user message at least)"
        )
    return conversation[:-1], conversation[-1]["content"]


def _with_system_prompt(messages: Messages, system_prompt: str | None) -> Messages:
    """The teacher's copy of a prompt: ``system_prompt`` replaces the prompt's system message (or is put first)."""
    if system_prompt is None:
        return messages
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return [{"role": "system", "content": system_prompt}, *rest] if system_prompt else list(rest)


def _answer_text(value: Any, row_id: str) -> str:
    """An 'answer' kept as text: a string as it is, a number as written (a JSON file's numbers are read as their
    text by :func:`~ssb_trl.storage.load_rows`; Parquet's and the Hub's ints and floats as ``str`` writes them)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(
        f"row {row_id!r}: 'answer' is {value!r}; ssb-trl label keeps an 'answer' column as text (a string or a "
        "number). Turn it into text, or rename the column to drop it from the labelled rows"
    )


def _check_columns(dataset: datasets.Dataset, config: LabelConfig) -> None:
    columns = list(dataset.column_names)
    if MESSAGES in columns and (PROMPT in columns or COMPLETION in columns):
        raise ValueError(
            f"dataset {config.dataset_name!r} has a 'messages' column and {[c for c in (PROMPT, COMPLETION) if c in columns]}:"
            " the prompt and completion would be ambiguous. Keep either 'messages' (a conversation) or "
            "'prompt'/'completion'"
        )
    if PROMPT not in columns and MESSAGES not in columns:
        raise ValueError(
            f"dataset {config.dataset_name!r} has neither a 'prompt' nor a 'messages' column; its columns are "
            f"{columns}. ssb-trl label reads {FORMATS_ACCEPTED}."
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {config.dataset_name!r} (split {config.dataset_split!r}) has no rows")
    if TEACHER_PROMPT in columns and config.teacher_system_prompt is not None:
        raise ValueError(
            "both a 'teacher_prompt' column and --teacher_system_prompt are given; the teacher's prompt would be "
            "ambiguous. Put the system message into 'teacher_prompt', or drop the column"
        )


def read_examples(dataset: datasets.Dataset, config: LabelConfig) -> list[LabelExample]:
    """The input rows as :class:`LabelExample`, or a ``ValueError`` naming the column, row and accepted formats."""
    _check_columns(dataset, config)
    columns = list(dataset.column_names)
    conversational, has_completion = MESSAGES in columns, COMPLETION in columns
    examples, empty = [], []
    for index, row in enumerate(dataset):
        row_id = str(row[ID]) if ID in columns and row[ID] is not None else f"{config.dataset_split}/{index}"
        if conversational:
            prompt, completion = _split_conversation(row[MESSAGES], row_id)
            if completion is not None and not completion.strip():
                empty.append(row_id)
        else:
            prompt = _messages(row[PROMPT], PROMPT, row_id)
            completion = _completion_text(row[COMPLETION], row_id) if has_completion else None
            if has_completion and completion is None:
                empty.append(row_id)
        _check_last_role(prompt, "messages" if conversational else PROMPT, row_id)
        teacher_value = row.get(TEACHER_PROMPT)
        teacher_prompt = (
            _messages(teacher_value, TEACHER_PROMPT, row_id)
            if teacher_value is not None
            else _with_system_prompt(prompt, config.teacher_system_prompt)
        )
        _check_last_role(teacher_prompt, TEACHER_PROMPT, row_id)
        if continues_final_message(prompt) != continues_final_message(teacher_prompt):
            raise ValueError(
                f"row {row_id!r}: one of its prompts ends with an assistant message (the completion continues it) and "
                f"the other does not (the completion starts a new turn): 'prompt' ends with a {prompt[-1]['role']!r} "
                f"message, 'teacher_prompt' with a {teacher_prompt[-1]['role']!r} one. The soft labels must be taken "
                "on the completion in the place the student reads it: end both the same way"
            )
        examples.append(
            LabelExample(row_id, prompt, teacher_prompt, completion, _answer_text(row.get(ANSWER), row_id))
        )
    if empty:
        raise ValueError(
            f"{len(empty)} row(s) of {config.dataset_name!r} have an empty completion (first: {empty[:5]}): there is "
            "no answer token to take soft labels on. Drop those rows, or drop their completion (the 'completion' "
            "column, or the empty last assistant message) to have the teacher write it."
        )
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(
            f"the 'id' column of {config.dataset_name!r} repeats ids (e.g. {repeated}); ids must be unique"
        )
    return examples


def load_examples(config: LabelConfig) -> list[LabelExample]:
    """Load and check the input rows (``num_rows`` first ones)."""
    dataset = load_rows(
        config.dataset_name, split=config.dataset_split, config_name=config.dataset_config, text_columns=[ID, ANSWER]
    )
    if config.num_rows is not None:
        dataset = dataset.select(range(min(config.num_rows, len(dataset))))
    return read_examples(dataset, config)


# --------------------------------------------------------------------------------------------------
# Tokens


@dataclass
class _Tokens:
    """One row in tokens: the student's prompt, the teacher's prompt, the completion (None: still to generate)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    completion: list[int] | None


def completion_ids(tokenizer: Any, text: str, end_of_turn: int) -> list[int]:
    """A completion's tokens, ending with the end-of-turn token (the student learns to stop); special tokens written
    in the text stay text, as in the prompts (:func:`ssb_trl.tasks.prompts.completion_text_ids`)."""
    return completion_text_ids(tokenizer, text, end_of_turn)


def tokenize_examples(
    examples: list[LabelExample],
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    config: LabelConfig,
    context_window: int | None,
) -> list[_Tokens]:
    """Every row in tokens; rows too long for ``max_length`` or the teacher's context are refused, named."""
    end_of_turn = end_of_turn_id(teacher_tokenizer)
    tokens, too_long, over_context = [], [], []
    for example in examples:
        try:
            student = chat_prompt_ids(student_tokenizer, example.prompt)
            teacher = (
                student
                if example.teacher_prompt == example.prompt and student_tokenizer is teacher_tokenizer
                else chat_prompt_ids(teacher_tokenizer, example.teacher_prompt)
            )
        except Exception as exc:  # a chat template that rejects the conversation (roles, order)
            raise ValueError(
                f"row {example.id!r}: the chat template cannot render its prompt ({type(exc).__name__}: {exc}); "
                "check the roles and order of its messages"
            ) from exc
        answer = (
            None if example.completion is None else completion_ids(teacher_tokenizer, example.completion, end_of_turn)
        )
        length = len(student) + (len(answer) if answer is not None else 1)
        if config.max_length is not None and length > config.max_length:
            too_long.append(f"{example.id} ({length} tokens)")
        teacher_length = len(teacher) + (len(answer) if answer is not None else config.teacher_max_new_tokens)
        if context_window is not None and teacher_length > context_window:
            over_context.append(f"{example.id} ({teacher_length} tokens)")
        tokens.append(_Tokens(student, teacher, answer))
    if too_long:
        raise ValueError(
            f"{len(too_long)} row(s) are longer than max_length={config.max_length} student tokens (prompt + "
            f"completion; first: {too_long[:5]}). Cutting a completion would cut its end of turn and teach the "
            "student not to stop, so they are refused: raise --max_length, or drop those rows from the input."
        )
    if over_context:
        raise ValueError(
            f"{len(over_context)} row(s) do not fit the teacher's context window of {context_window} positions "
            f"(teacher prompt + completion, or + teacher_max_new_tokens when the teacher writes it; first: "
            f"{over_context[:5]}). Drop those rows, or lower --teacher_max_new_tokens."
        )
    return tokens


def check_student_tokenizer(teacher_tokenizer: Any, student_tokenizer: Any, teacher: str, student: str) -> None:
    """Refuse a student whose tokenizer is not the teacher's: the stored ids would mean other tokens to it, and another
    chat template would frame the student's prompt otherwise than the teacher's completion (its end of turn)."""
    teacher_print, student_print = tokenizer_fingerprint(teacher_tokenizer), tokenizer_fingerprint(student_tokenizer)
    if teacher_print != student_print:
        raise ValueError(
            f"the student {student!r} has another tokenizer than the teacher {teacher!r} (student: {student_print}, "
            f"teacher: {teacher_print}): soft labels are teacher token ids, which would be other tokens (or none) "
            "for this student, and `ssb-trl train` would refuse the dataset. Pick a teacher and a student of one "
            "model family with the same vocabulary (e.g. Qwen2.5-7B-Instruct -> Qwen2.5-0.5B-Instruct)."
        )
    templates = [
        getattr(tokenizer, "chat_template", None) or None for tokenizer in (teacher_tokenizer, student_tokenizer)
    ]
    if templates[0] != templates[1]:
        digests = [hashlib.sha256((t or "").encode()).hexdigest()[:12] if t else "none" for t in templates]
        raise ValueError(
            f"the student {student!r} has the vocabulary of the teacher {teacher!r} but another chat template "
            f"(student: {digests[1]}, teacher: {digests[0]}, sha256 of the template): the rows would put the "
            "student's prompt in one template and the teacher's completion, ending with the teacher's end of turn, "
            "in another. Give the student the teacher's chat template (tokenizer.chat_template, then "
            "save_pretrained), or drop --student_model_name_or_path to render the rows with the teacher's"
        )

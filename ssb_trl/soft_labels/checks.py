"""The soft-label checks: a dataset, its metadata and a batch against the format (:mod:`ssb_trl.soft_labels.schema`).

This module refuses rows that break the format, naming the first bad row and the fix. Training (`SSBTrainer`), `save_soft_label_dataset` and `ssb-trl inspect` all run
:func:`validate_soft_label_dataset`, so a dataset that one of them accepts, all accept. The checks are
vectorised over the Arrow buffers, so a large dataset is checked in seconds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ssb_trl.soft_labels.codec import LOGPROB_CODE_DTYPE, LOGPROB_CODE_STEP, decode_logprobs, is_compact
from ssb_trl.soft_labels.schema import (
    COMPLETION_MASK,
    FORMAT_VERSION,
    INPUT_IDS,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    SoftLabelError,
    SoftLabelMetadata,
    tokenizer_fingerprint,
)

# fp16 rounding of K log-probs can push their mass a little above 1; beyond this it is a broken row.
MASS_TOLERANCE = 1e-2
# The compact 8-bit codes round each probability by up to a factor exp(step / 2) (exp(step) for sampled soft
# labels, which round up so that their mass stays >= 1): a row's mass may exceed 1 by as much.
CODE_MASS_TOLERANCE = float(np.expm1(LOGPROB_CODE_STEP)) + 1e-3


def _row_error(row: int, problem: str, fix: str) -> SoftLabelError:
    return SoftLabelError(f"soft-label dataset row {row}: {problem}. {fix}")


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _is_list(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
    )


def _rows_with_nulls(array: pa.Array) -> np.ndarray:
    """Per row: does it hold a null at any nesting level? (Arrow would turn a null id into NaN, then into an id.)"""
    bad = pc.is_null(array).to_numpy(zero_copy_only=False).copy()
    if _is_list(array.type) and len(array):
        child_bad = _rows_with_nulls(pc.list_flatten(array))
        if child_bad.any():
            parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
            bad[np.unique(parents[child_bad])] = True
    return bad


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    while _is_list(arrow_type):
        arrow_type = arrow_type.value_type
    return arrow_type


def _logprobs_are_codes(arrow_type: pa.DataType, name: str, metadata: SoftLabelMetadata | None) -> bool:
    """Compact (uint8 codes) or float log-probs? Refuse other integer types and a column the metadata contradicts."""
    value_type = _value_type(arrow_type)
    codes = is_compact(value_type)
    if codes and str(value_type) != LOGPROB_CODE_DTYPE:
        raise SoftLabelError(
            f"the soft-label dataset stores {name} as {value_type}: log-probs are floats (float16/float32), or uint8 "
            "codes in the compact format (ssb_trl.soft_labels.codec). Rebuild the column with "
            "ssb_trl.soft_labels.codec.encode_soft_labels, or store the float log-probs."
        )
    if metadata is not None and codes != is_compact(metadata.logprob_dtype):
        raise SoftLabelError(
            f"the soft-label metadata says logprob_dtype={metadata.logprob_dtype!r} but {name} holds "
            f"{value_type} values: the data and its {'ssb_metadata.json'} disagree. Keep the metadata written with "
            "the data (`ssb-trl prepare` / ssb_trl.save_soft_label_dataset write both), or correct logprob_dtype."
        )
    return codes


def _require_integer_lists(arrow_type: pa.DataType, name: str, allow_bool: bool = False) -> None:
    """Token ids and masks must be stored as integers: float ids would be floored silently by the collator."""
    value_type = arrow_type
    while _is_list(value_type):
        value_type = value_type.value_type
    if not (pa.types.is_integer(value_type) or (allow_bool and pa.types.is_boolean(value_type))):
        raise SoftLabelError(
            f"the soft-label dataset stores {name} as {value_type}, not integers. Token ids and masks must be "
            "integers; float ids would be floored silently. Check that the values are whole numbers and cast the "
            "column to int32 (the schema is ssb_trl.soft_labels.schema.features()), or rebuild the dataset."
        )


def check_soft_label_columns(dataset, columns: tuple[str, str] = (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS)) -> None:
    """The cheap checks first: the dataset is not empty and has the token and soft-label columns."""
    if len(dataset) == 0:
        raise SoftLabelError("the soft-label dataset is empty: data preparation kept no example. Nothing to train on.")
    missing = [c for c in (INPUT_IDS, COMPLETION_MASK, *columns) if c not in dataset.column_names]
    if missing:
        raise SoftLabelError(
            f"the dataset lacks the soft-label column(s) {missing} (it has {dataset.column_names}). SSBTrainer "
            "trains on a soft-label dataset: per row the tokenized prompt + answer (input_ids, completion_mask) and, "
            "for every answer token, the teacher's top-K token ids and log-probs (the format: ssb_trl.soft_labels). "
            "From prompt/completion (or messages) data and any teacher of the student's tokenizer: `ssb-trl label "
            "--dataset_name your_data.jsonl --teacher_model_name_or_path TEACHER --output_dir DATA_DIR` (offline "
            "distillation). From question/answer data, SSB: `ssb-trl prepare --dataset_name your_questions.jsonl "
            "--model_name_or_path MODEL --output_dir DATA_DIR` (the model answers, is hinted, and becomes the "
            "teacher). Then ssb_trl.load_soft_label_dataset(DATA_DIR). In Python: "
            "ssb_trl.soft_labels.extract_topk_soft_labels(teacher, sequences, answer_starts, top_k, temperature) -> "
            "one row per example -> ssb_trl.save_soft_label_dataset(datasets.Dataset.from_list(rows), DATA_DIR, "
            "ssb_trl.SoftLabelMetadata(...)). To train on the plain text without a teacher, use trl.SFTTrainer."
        )


def validate_soft_label_dataset(
    dataset,
    metadata: SoftLabelMetadata | None = None,
    vocab_size: int | None = None,
    columns: tuple[str, str] = (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS),
    check_mass: bool = True,
) -> None:
    """Refuse a dataset that breaks the column contract, naming the first bad row and the fix.

    With `metadata`, K must be its `top_k` and, for top-K labels, the answers must be the tokens the teacher sampled
    (:func:`check_sampled_tokens_in_top_k`; a sampled soft label's drawn set need not hold its answer token, so
    sampled rows are checked for a mass of 1 instead, :func:`check_sampled_mass`); with `vocab_size`, every id must
    fit the model. Vectorised over
    Arrow buffers, so a large dataset is checked in seconds.
    """
    ids_col, logp_col = columns
    check_soft_label_columns(dataset, columns)
    table = dataset.with_format("arrow")[:]
    if not isinstance(table, pa.Table):  # pragma: no cover - older datasets
        table = pa.Table.from_pydict(table)

    def col(name):
        return table.column(name).combine_chunks()

    for name in (INPUT_IDS, COMPLETION_MASK, ids_col, logp_col):
        bad = _rows_with_nulls(col(name))
        if bad.any():
            raise _row_error(
                _first(bad),
                f"{name} holds a missing (null) value",
                "Rebuild the row: every token needs its id and mask, and every answer token its K ids and log-probs.",
            )
    for name in (INPUT_IDS, COMPLETION_MASK, ids_col):
        _require_integer_lists(table.column(name).type, name, allow_bool=name == COMPLETION_MASK)
    input_len = pc.list_value_length(col(INPUT_IDS)).to_numpy(zero_copy_only=False)
    mask = col(COMPLETION_MASK)
    mask_len = pc.list_value_length(mask).to_numpy(zero_copy_only=False)
    bad = input_len != mask_len
    if bad.any():
        i = _first(bad)
        raise _row_error(i, f"input_ids has {input_len[i]} tokens but completion_mask {mask_len[i]}", "Rebuild it.")
    mask_values = pc.list_flatten(mask).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(mask_len)])
    token_of_row = np.repeat(np.arange(len(mask_len)), mask_len)
    bad = (mask_values != 0) & (mask_values != 1)
    if bad.any():
        j = _first(bad)
        raise _row_error(
            token_of_row[j],
            f"completion_mask holds the value {mask_values[j]} (only 0 = prompt and 1 = answer token are allowed)",
            "Rebuild the row with a 0/1 mask; SSB counts answer tokens by summing it.",
        )
    if vocab_size is not None:
        input_values = pc.list_flatten(col(INPUT_IDS)).to_numpy(zero_copy_only=False)
        bad = (input_values < 0) | (input_values >= vocab_size)
        if bad.any():
            j = _first(bad)
            raise _row_error(
                token_of_row[j],
                f"input_ids holds the token id {input_values[j]}, outside the model's vocabulary [0, {vocab_size})",
                "The row was tokenized for another model; rebuild the dataset with this model's tokenizer "
                "(or resize the model's embeddings if you added tokens).",
            )
    n_answer = np.add.reduceat(mask_values, offsets[:-1]) if len(mask_values) else np.zeros(len(mask_len), np.int64)
    n_answer = np.where(mask_len > 0, n_answer, 0)
    # The answer must be one contiguous span after a non-empty prompt: that is how positions line up.
    answer_start = mask_len - n_answer
    tail_sums = np.array([mask_values[o + s : o + m].sum() for o, s, m in zip(offsets[:-1], answer_start, mask_len)])
    bad = (n_answer == 0) | (answer_start < 1) | (tail_sums != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            "completion_mask must be 0 on a non-empty prompt, then 1 on every answer token to the end "
            f"(got {n_answer[i]} answer tokens of {mask_len[i]})",
            "Check how the row was built; the answer must follow the prompt.",
        )
    ids = col(ids_col)
    logp = col(logp_col)
    ids_rows = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    logp_rows = pc.list_value_length(logp).to_numpy(zero_copy_only=False)
    bad = (ids_rows != n_answer) | (logp_rows != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            f"{n_answer[i]} answer tokens but {ids_rows[i]} rows of {ids_col} and {logp_rows[i]} of {logp_col}",
            "Soft labels must have one row per answer token; the row was truncated or built with another tokenizer. "
            "Rebuild the dataset (do not truncate input_ids alone).",
        )
    ids_inner, logp_inner = pc.list_flatten(ids), pc.list_flatten(logp)
    k_ids = pc.list_value_length(ids_inner).to_numpy(zero_copy_only=False)
    k_logp = pc.list_value_length(logp_inner).to_numpy(zero_copy_only=False)
    token_row = np.repeat(np.arange(len(ids_rows)), ids_rows)
    offsets_ids = np.concatenate([[0], np.cumsum(ids_rows)])
    k = int(metadata.top_k) if metadata is not None else int(k_ids[0])
    bad = (k_ids != k) | (k_logp != k)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, f"expected K={k} soft-label entries per token, found {k_ids[bad][0]}", "Rebuild it.")
    flat_ids = pc.list_flatten(ids_inner).to_numpy(zero_copy_only=False).reshape(-1, k)
    flat_logp = pc.list_flatten(logp_inner).to_numpy(zero_copy_only=False).reshape(-1, k)
    codes = _logprobs_are_codes(logp.type, logp_col, metadata)
    if codes:
        flat_logp = decode_logprobs(flat_logp)
    flat_logp = flat_logp.astype(np.float32)
    if vocab_size is not None:
        bad = ((flat_ids < 0) | (flat_ids >= vocab_size)).any(-1)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher token id outside the model's vocabulary [0, {vocab_size})",
                "The soft labels were made with another tokenizer/model; rebuild them with this one.",
            )
    bad = ~np.isfinite(flat_logp).all(-1)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, "NaN or infinite teacher log-prob", "Rebuild the row; the teacher pass overflowed.")
    if k > 1:
        sorted_ids = np.sort(flat_ids, axis=-1)
        bad = (sorted_ids[:, 1:] == sorted_ids[:, :-1]).any(-1)
        if bad.any():
            t = _first(bad)
            i, answer_token = token_row[t], t - offsets_ids[token_row[t]]
            repeated = sorted_ids[t, 1:][sorted_ids[t, 1:] == sorted_ids[t, :-1]][0]
            raise _row_error(
                i,
                f"answer token {answer_token} lists the teacher id {repeated} twice in its top-K {ids_col}",
                "Each token's top-K ids must be distinct (the K most probable tokens, as torch.topk returns them); "
                "rebuild the soft labels with ssb_trl.soft_labels.extract_topk_soft_labels.",
            )
        bad = (flat_logp[:, 1:] > flat_logp[:, :-1]).any(-1)
        if bad.any():
            t = _first(bad)
            i, answer_token = token_row[t], t - offsets_ids[token_row[t]]
            raise _row_error(
                i,
                f"answer token {answer_token}: {logp_col} increase along K ({flat_logp[t].tolist()[:4]}...); the "
                "top-K must be stored most probable first",
                "Sort each token's ids and log-probs together by descending log-prob (torch.topk(..., sorted=True) "
                "does); ids sorted by value are a common cause.",
            )
    if check_mass:
        mass = np.exp(flat_logp.astype(np.float64)).sum(-1)
        tolerance = CODE_MASS_TOLERANCE if codes else MASS_TOLERANCE
        bad = (flat_logp > 1e-3).any(-1) | (mass > 1.0 + tolerance)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher top-K probability mass {mass[bad][0]:.4f} exceeds 1 (log-probs must be normalised over "
                "the full vocabulary)",
                "Store log_softmax(logits / T) values, not raw logits.",
            )
        if metadata is not None and metadata.sampled:
            check_sampled_mass(mass, token_row, offsets_ids, metadata, codes)
    if metadata is not None and not metadata.sampled:  # a drawn set need not hold the answer's token
        answer_tokens = pc.list_flatten(col(INPUT_IDS)).to_numpy(zero_copy_only=False)[mask_values == 1]
        check_sampled_tokens_in_top_k(answer_tokens, flat_ids, n_answer, metadata, ids_col)


def check_sampled_mass(
    mass: np.ndarray, token_row: np.ndarray, offsets: np.ndarray, metadata: SoftLabelMetadata, codes: bool
) -> None:
    """Sampled soft labels are counts / N over the drawn ids: each token's stored mass is 1, up to rounding.

    A lower mass means entries were dropped or the rows are not draws (top-K labels under a sampled metadata,
    or importance weights), and the loss would put the missing mass in the tail bucket: a biased target.
    """
    lowest = np.exp(-LOGPROB_CODE_STEP) - 1e-3 if codes else 1.0 - MASS_TOLERANCE
    bad = mass < lowest
    if bad.any():
        t = _first(bad)
        i = token_row[t]
        raise _row_error(
            i,
            f"answer token {t - offsets[i]} holds sampled soft labels of mass {mass[t]:.4f}, not 1: the metadata "
            f"says soft_label_mode='sampled' with N={metadata.soft_label_draws} draws, whose log(count / N) entries "
            "sum to 1",
            "Rebuild the soft labels with `ssb-trl prepare --soft_label_mode sampled` (or "
            "ssb_trl.soft_labels.teacher.extract_soft_labels(..., mode='sampled')), or, if these are top-K labels, correct "
            "soft_label_mode in the dataset's ssb_metadata.json.",
        )


def teacher_sampling_top_k(metadata: SoftLabelMetadata) -> int | None:
    """How many of its most probable tokens the teacher sampled its answers from, as `source` records it.

    1 for greedy decoding (temperature 0), the top_k for top-k sampling; None when the settings are not
    recorded (a dataset not made by `ssb-trl prepare`) or the sampling was not restricted (top_k 0).
    """
    sampling = metadata.source.get("teacher_sampling") if isinstance(metadata.source, dict) else None
    if not isinstance(sampling, dict):
        return None
    temperature, top_k = sampling.get("temperature"), sampling.get("top_k")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0:
        return 1
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0:
        return top_k
    return None


def allowed_top_k_misses(num_checked: np.ndarray) -> np.ndarray:
    """Sampled tokens a row (or the dataset) may have outside the stored top-K: numerical noise, not misalignment.

    The teacher sampled (on the generation engine, often vLLM in bf16) and was scored (teacher-forced, often
    another kernel and batch) in two passes, so a token ranked near the sampling top-k boundary can fall just
    outside the stored top-K on a near-tie. That is rare and isolated (SmolLM2-135M: 0 of 283 tokens); soft
    labels shifted by a token miss on most tokens (37-64%, at least 23% per row). One miss per 20 checked
    tokens (at least 1) tells them apart.
    """
    return np.maximum(1, num_checked // 20)


def check_sampled_tokens_in_top_k(
    answer_tokens: np.ndarray,
    topk_ids: np.ndarray,
    n_answer: np.ndarray,
    metadata: SoftLabelMetadata,
    ids_column: str = TEACHER_TOPK_IDS,
) -> None:
    """Refuse soft labels that are not the teacher's distribution over the answer tokens it sampled.

    With top-k sampling of k <= K, every token the teacher sampled is among the k most probable at the sampling
    temperature, which ranks tokens as the stored distribution at T does: so answer token j must be among the
    K ids of soft-label row j. Skipped when `source` records no restricted sampling or k > K. A row's last
    token is not checked: preparation appends the end-of-turn token when the engine stopped on another one.

    `answer_tokens` [n_tokens]: every row's answer token ids in order; `topk_ids` [n_tokens, K]: their soft-label
    rows; `n_answer` [n_rows]: answer tokens per row.
    """
    sampled_top_k, k = teacher_sampling_top_k(metadata), topk_ids.shape[1]
    if sampled_top_k is None or sampled_top_k > k or not len(answer_tokens):
        return
    listed = (topk_ids == answer_tokens[:, None]).any(-1)
    row_of_token = np.repeat(np.arange(len(n_answer)), n_answer)
    last_of_row = np.cumsum(n_answer) - 1
    missed = ~listed
    missed[last_of_row] = False
    misses = np.bincount(row_of_token[missed], minlength=len(n_answer))
    checked = np.maximum(n_answer - 1, 0)
    bad = misses > allowed_top_k_misses(checked)
    if bad.any():
        row = _first(bad)
    elif misses.sum() > allowed_top_k_misses(checked.sum()):  # short answers: one miss each, on most rows
        row = _first(misses > 0)
    else:
        return
    token = _first(missed & (row_of_token == row))
    answer_token = token - (last_of_row[row] + 1 - n_answer[row])
    raise _row_error(
        row,
        f"{misses[row]} of its {checked[row]} answer tokens ({misses.sum()} of the dataset's {checked.sum()}) are not "
        f"among the teacher's top-{k} {ids_column}, though the teacher sampled them with top_k={sampled_top_k} "
        f"(first: answer token {answer_token}, id "
        f"{answer_tokens[token]}); the soft labels do not belong to this answer: shifted by a token, or taken on "
        "another sequence or with another model",
        "Soft-label row j must be the teacher's distribution over answer token j, read from the logits at position "
        "prompt_length + j - 1, as ssb_trl.soft_labels.extract_topk_soft_labels returns it. Rebuild the soft labels "
        f"with the model that wrote the answers (`{metadata.source.get('kind') or 'ssb-trl prepare'}` does this), "
        "or, if the teacher's sampling settings in the dataset's ssb_metadata.json (source.teacher_sampling) are "
        "wrong, correct them.",
    )


def check_metadata_compatible(
    metadata: SoftLabelMetadata,
    tokenizer,
    temperature: float,
    allow_temperature_renormalization: bool = False,
) -> None:
    """Refuse soft labels made with another tokenizer or at another temperature than configured."""
    if metadata.format_version > FORMAT_VERSION:
        raise SoftLabelError(
            f"soft-label format version {metadata.format_version} is newer than this ssb-trl understands "
            f"({FORMAT_VERSION}); upgrade ssb-trl."
        )
    expected = tokenizer_fingerprint(tokenizer)
    if metadata.tokenizer_fingerprint != expected:
        raise SoftLabelError(
            f"the soft labels were made with another tokenizer (dataset: {metadata.tokenizer_fingerprint}, "
            f"this tokenizer: {expected}; teacher {metadata.teacher_model!r}). Train the model the data was made "
            "for, or rebuild the soft labels with this model's tokenizer."
        )
    if abs(metadata.temperature - temperature) > 1e-6 and metadata.sampled:
        raise SoftLabelError(
            f"the sampled soft labels were drawn at temperature {metadata.temperature} but SSBConfig.temperature is "
            f"{temperature}. Draws are an unbiased estimate of the distribution at the temperature they were drawn "
            f"at only; rescaling them to another one is biased, so it is not offered. Set "
            f"temperature={metadata.temperature}, or rebuild the soft labels at {temperature}."
        )
    if abs(metadata.temperature - temperature) > 1e-6 and not allow_temperature_renormalization:
        raise SoftLabelError(
            f"the soft labels were taken at temperature {metadata.temperature} but SSBConfig.temperature is "
            f"{temperature}. Set temperature={metadata.temperature}, rebuild the soft labels at {temperature}, or set "
            "allow_temperature_renormalization=True to rescale them over the top-K ids (drops the tail bucket)."
        )


def check_batch_alignment(num_answer_tokens: int, num_soft_label_rows: int) -> None:
    """A batch must hold exactly one soft-label row per answer token (labels != -100 after the shift)."""
    if num_answer_tokens != num_soft_label_rows:
        raise SoftLabelError(
            f"the batch has {num_answer_tokens} answer tokens but {num_soft_label_rows} soft-label rows; "
            "the collator or dataset misaligned them (was input_ids truncated without its soft labels?)."
        )

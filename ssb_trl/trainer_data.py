"""What SSBTrainer accepts as datasets, and how it readies each one (train, eval, test) before using it.

Every dataset is checked the same way: it is a map-style `datasets.Dataset`; its soft labels were made with
this run's tokenizer at this run's temperature (its own metadata, or the training data's when it carries
none); its rows keep the contract (`ssb_trl.soft_labels.checks`) and fit the model's vocabulary; then it is
cut to `max_length` with its soft labels.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl.trainer.utils import get_config_model_id

from ssb_trl.config import SSBConfig
from ssb_trl.models import prepare_tokenizer
from ssb_trl.soft_labels.checks import check_metadata_compatible, validate_soft_label_dataset
from ssb_trl.soft_labels.io import truncate_soft_label_dataset
from ssb_trl.soft_labels.schema import COMPLETION_MASK, INPUT_IDS, SoftLabelError, SoftLabelMetadata


def require_dataset(dataset: Any, argument: str) -> None:
    """SSBTrainer checks and truncates every row before training: it needs a map-style `datasets.Dataset`."""
    if isinstance(dataset, Dataset):
        return
    kind = type(dataset).__name__
    if isinstance(dataset, DatasetDict):
        splits = list(dataset)
        eval_hint = " and eval_dataset=dataset['test']" if "test" in splits and argument == "train_dataset" else ""
        raise TypeError(
            f"{argument} is a DatasetDict with the splits {splits}; SSBTrainer trains on one split. Pass "
            f"{argument}=dataset[{splits[0] if splits else 'train'!r}]{eval_hint}, or load one split: "
            "ssb_trl.load_soft_label_dataset(path, split=...)."
        )
    if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
        raise TypeError(
            f"{argument} is a streaming {kind}; SSBTrainer validates every row against the model and truncates "
            "soft labels with their tokens before training, which needs a map-style datasets.Dataset. Load it "
            "without streaming=True (ssb_trl.load_soft_label_dataset does), or materialise it with "
            "datasets.Dataset.from_generator."
        )
    if isinstance(dataset, (list, tuple)):
        raise TypeError(
            f"{argument} is a {kind} of {len(dataset)} items, not a datasets.Dataset. Build one from rows with "
            "datasets.Dataset.from_list(rows) and keep its metadata with ssb_trl.save_soft_label_dataset / "
            "load_soft_label_dataset"
            + ("; several eval sets go in a dict name -> Dataset." if argument != "train_dataset" else ".")
        )
    raise TypeError(f"{argument} must be a datasets.Dataset (a soft-label dataset), got {kind}.")


def named_eval_sets(eval_dataset: Any) -> dict[str, Any]:
    """Trainer's eval_dataset as {argument name: dataset}: one set, or a dict (a DatasetDict too) of named sets."""
    if eval_dataset is None:
        return {}
    if isinstance(eval_dataset, dict):
        return {f"eval_dataset[{name!r}]": dataset for name, dataset in eval_dataset.items()}
    return {"eval_dataset": eval_dataset}


def resolve_tokenizer(model: Any, processing_class: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    """The given tokenizer, or the model's own (as SFTTrainer does), checked for a chat template and a pad token."""
    if processing_class is not None:
        return processing_class
    name = model if isinstance(model, str) else get_config_model_id(model.config)
    tokenizer = AutoTokenizer.from_pretrained(name)
    prepare_tokenizer(tokenizer, name)
    return tokenizer


def training_metadata(
    train_dataset: Dataset, given: SoftLabelMetadata | None, tokenizer: PreTrainedTokenizerBase, args: SSBConfig
) -> SoftLabelMetadata | None:
    """The training data's metadata (`given`, else the dataset's own), checked against this run when asked."""
    metadata = given or SoftLabelMetadata.from_description(train_dataset.info.description)
    if not args.check_soft_label_metadata:
        return metadata
    if metadata is None:
        raise SoftLabelError(
            "the soft-label dataset carries no metadata (teacher, tokenizer fingerprint, temperature, K), so it "
            "cannot be checked against this run. Load it with ssb_trl.load_soft_label_dataset, pass "
            "soft_label_metadata=..., or set check_soft_label_metadata=False at your own risk."
        )
    check_metadata_compatible(metadata, tokenizer, args.temperature, args.allow_temperature_renormalization)
    return metadata


def evaluation_metadata(
    dataset: Dataset,
    argument: str,
    train_metadata: SoftLabelMetadata | None,
    tokenizer: PreTrainedTokenizerBase,
    args: SSBConfig,
) -> SoftLabelMetadata | None:
    """An eval or test set's metadata: its own (checked against this run and the training data), else the
    training data's, which the caller vouched for by passing the set along with it."""
    own = SoftLabelMetadata.from_description(dataset.info.description)
    if own is None or not args.check_soft_label_metadata:
        return own or train_metadata
    try:
        check_metadata_compatible(own, tokenizer, args.temperature, args.allow_temperature_renormalization)
    except SoftLabelError as error:
        raise SoftLabelError(f"{argument}: {error}") from None
    if train_metadata is not None and abs(own.temperature - train_metadata.temperature) > 1e-6:
        raise SoftLabelError(
            f"{argument}: the soft labels were taken at temperature {own.temperature}, the training data's at "
            f"{train_metadata.temperature}. The run rescales every soft label by one factor (training T / "
            f"SSBConfig.temperature), so its eval sets must share the training data's temperature: rebuild this "
            f"set at {train_metadata.temperature}."
        )
    return own


def prepare_soft_label_dataset(
    dataset: Dataset, argument: str, metadata: SoftLabelMetadata | None, vocab_size: int, args: SSBConfig
) -> Dataset:
    """Validate against the contract (K from `metadata`) and the model's vocabulary, then cut to max_length."""
    columns = (args.soft_label_ids_column, args.soft_label_logprobs_column)
    validate_soft_label_dataset(
        dataset,
        metadata=metadata if args.check_soft_label_metadata else None,
        vocab_size=vocab_size,
        columns=columns,
    )
    if args.max_length is not None:
        shortest_prompt = min(len(mask) - sum(mask) for mask in dataset[COMPLETION_MASK])
        dataset = truncate_soft_label_dataset(dataset, args.max_length, columns)
        if len(dataset) == 0:
            name = "train" if argument == "train_dataset" else argument
            raise SoftLabelError(
                f"the {name} dataset has no row left after truncation to max_length={args.max_length}: its "
                f"shortest prompt has {shortest_prompt} tokens, so no answer token fits. Raise max_length well "
                "above the prompt lengths (or set max_length=None to keep whole rows)."
            )
    return dataset.select_columns([INPUT_IDS, COMPLETION_MASK, *columns])

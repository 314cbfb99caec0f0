"""SSBConfig: SFTConfig plus the settings of the soft-label distillation loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import SFTConfig

from ssb_trl.loss import DistillationLossSpec
from ssb_trl.validation import require_valid_numbers

logger = logging.getLogger(__name__)


@dataclass
class SSBConfig(SFTConfig):
    r"""
    Configuration for [`SSBTrainer`]: every [`~trl.SFTConfig`] field, plus the distillation loss.

    The loss per answer token is `kd_weight * T^2 * D(teacher || student) + ce_weight * CE`, where D is
    computed over the teacher's top-K ids plus a tail bucket at temperature T and averaged over the
    answer tokens of the whole accumulated (and multi-process) batch.

    Parameters:
        temperature (`float`, defaults to `2.0`):
            Softening temperature T of both teacher and student distributions (the paper uses 2.0). The
            soft labels must have been taken at this temperature (see `allow_temperature_renormalization`).
        kd_weight (`float`, defaults to `1.0`):
            Weight of the soft-label (distillation) term.
        ce_weight (`float`, defaults to `0.0`):
            Weight of the hard-label cross-entropy term on the teacher's answer tokens (the paper uses 0).
            `kd_weight=0, ce_weight=1` is plain SFT on the teacher answers: the hard-label baseline.
        beta (`float`, defaults to `0.0`):
            Generalised JSD interpolation as in TRL's GKD: 0 = forward KL(teacher || student), 1 = reverse KL.
        use_tail_bucket (`bool`, defaults to `True`):
            Compare the teacher's top-K plus one bucket for the rest of the vocabulary (exact for that coarse
            distribution). If `False`, both sides are renormalised over the K ids.
        loss_chunk_size (`int` or `None`, defaults to `None`):
            Answer tokens projected to the vocabulary at once. `None` sizes chunks so one fp32 chunk of logits
            stays near 256 MB.
        soft_label_ids_column / soft_label_logprobs_column (`str`):
            Names of the soft-label columns.
        allow_temperature_renormalization (`bool`, defaults to `False`):
            Accept soft labels taken at another temperature by rescaling the stored log-probs over the top-K ids
            (drops the tail bucket). Off by default: a mismatch is usually a mistake.
        check_soft_label_metadata (`bool`, defaults to `True`):
            Require dataset metadata (tokenizer fingerprint, temperature, K) and check it against this run.
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softening temperature T for teacher and student (paper: 2.0); loss is scaled by T^2."},
    )
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the soft-label distillation term."})
    ce_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the hard-label CE term on the teacher answer (paper: 0; 1 with kd_weight 0 = SFT)."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={"help": "Generalised JSD beta as in GKD: 0 = forward KL(teacher||student), 1 = reverse KL."},
    )
    use_tail_bucket: bool = field(
        default=True,
        metadata={"help": "Add a bucket for the teacher mass outside its top-K; if False renormalise over top-K."},
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Answer tokens projected to the vocabulary per chunk; None = ~256 MB fp32 chunks."},
    )
    soft_label_ids_column: str = field(
        default="teacher_topk_ids", metadata={"help": "Column with the teacher top-K token ids."}
    )
    soft_label_logprobs_column: str = field(
        default="teacher_topk_logprobs", metadata={"help": "Column with the teacher top-K log-probs."}
    )
    allow_temperature_renormalization: bool = field(
        default=False,
        metadata={"help": "Accept soft labels made at another temperature by renormalising over the top-K ids."},
    )
    check_soft_label_metadata: bool = field(
        default=True,
        metadata={"help": "Require and check the dataset's soft-label metadata (tokenizer, temperature, K)."},
    )

    def __post_init__(self):
        require_valid_numbers(self)  # before SFTConfig derives anything from a NaN (learning rate, warmup...)
        self._choose_bf16()
        super().__post_init__()
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(
                f"max_length must be >= 1 token (or None for no truncation), got {self.max_length}. It cuts each row "
                "(prompt + answer) and its soft labels; set it above your longest prompt so answers survive."
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "SSBTrainer does not support packing or padding_free yet: the soft labels are aligned per sequence. "
                "Set packing=False and padding_free=False."
            )
        if self.loss_type != "nll":
            raise ValueError(
                f"loss_type={self.loss_type!r} is SFT-only; SSBTrainer's loss is set by kd_weight/ce_weight/beta."
            )
        self._refuse_sft_only_settings()
        self.loss_spec()  # kd_weight, ce_weight, temperature, beta: refused now, not after the data and model load
        for name, value, least in (
            ("learning_rate", self.learning_rate, 0.0),
            ("per_device_train_batch_size", self.per_device_train_batch_size, 1),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size, 1),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            cause = (
                "max_steps=0 (a max_steps >= 0 overrides num_train_epochs)"
                if self.max_steps == 0
                else f"num_train_epochs={self.num_train_epochs} with max_steps={self.max_steps} (= use the epochs)"
            )
            raise ValueError(
                f"{cause} trains 0 steps, and a recipe would then save the untouched model. Set num_train_epochs > 0 "
                "(e.g. 3) with max_steps=-1, or max_steps to the number of optimizer steps (> 0)."
            )

    def _choose_bf16(self) -> None:
        """TRL turns bf16 on unless told otherwise, which transformers refuses on a machine without a GPU ("Your
        setup doesn't support bf16/gpu"). Left unset there, SSB trains in float32 (said in the log); set to true
        there without ``use_cpu``, it is refused with the two ways on."""
        from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

        if self.use_cpu or is_torch_bf16_gpu_available() or is_torch_xla_available():
            return
        if self.bf16 is None and not self.fp16:
            self.bf16 = False
            logger.info("No GPU with bfloat16: training in float32 (TRL's default bf16=True needs a GPU)")
        elif self.bf16:
            raise ValueError(
                "bf16=true needs a GPU with bfloat16, and this machine has none: pass --bf16 false to train in "
                "float32 here, or --use_cpu true for bfloat16 autocast on the CPU"
            )

    def _refuse_sft_only_settings(self) -> None:
        """SFT settings that SSB would silently ignore: its rows are tokenized and templated by data preparation,
        cut by SSBTrainer (keeping the start), and its loss is always on the answer (the teacher's) tokens only."""
        ignored = {
            "truncation_mode": (
                self.truncation_mode != "keep_start",
                "SSBTrainer cuts rows longer than max_length at the end: it keeps the prompt and the start of "
                "the answer with its soft labels, as 'keep_start' does",
            ),
            "assistant_only_loss": (
                self.assistant_only_loss,
                "the SSB loss is always computed on the answer tokens only (completion_mask), never on the prompt",
            ),
            "completion_only_loss": (
                self.completion_only_loss is False,
                "the SSB loss is always computed on the answer tokens only; there is no loss on the prompt to add",
            ),
            "dataset_text_field": (
                self.dataset_text_field != "text",
                "a soft-label dataset is already tokenized (input_ids); no text column is read",
            ),
            "chat_template_path": (
                self.chat_template_path is not None,
                "the rows were chat-templated when the soft labels were made; a different template here would "
                "save a model whose template differs from the one it was trained on",
            ),
            "eval_packing": (self.eval_packing, "SSBTrainer does not pack sequences (the soft labels are per row)"),
        }
        set_here = [f"{name}={getattr(self, name)!r} ({why})" for name, (is_set, why) in ignored.items() if is_set]
        if set_here:
            raise ValueError(
                "SSBConfig: these SFT settings mean nothing for SSB and would be silently ignored: "
                + "; ".join(set_here)
                + ". Remove them from the command line / YAML (or set them to their defaults)."
            )

    def loss_spec(self) -> DistillationLossSpec:
        """The loss settings as the immutable spec the loss function takes."""
        return DistillationLossSpec(
            temperature=self.temperature,
            kd_weight=self.kd_weight,
            ce_weight=self.ce_weight,
            beta=self.beta,
            use_tail_bucket=self.use_tail_bucket,
            chunk_size=self.loss_chunk_size,
        )

"""The settings every offline job shares: where its output goes, its soft labels, and the one fingerprint rule.

A job's config dataclass (``PrepConfig``, ``LabelConfig``) mixes in :class:`JobSettings` and
:class:`SoftLabelSettings` next to its own fields. Each field carries a ``help`` string, so ``trl.TrlParser``
turns it into a flag and a YAML key. :func:`fingerprint` is what a run records of its settings, and so what a
rerun is compared with: every field except the runtime-only ones (:data:`RUNTIME_ONLY_FIELDS`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ssb_trl.generation.engine import EngineConfig
from ssb_trl.generation.scoring import scoring_refusal
from ssb_trl.soft_labels.codec import LOGPROB_DTYPES, SOFT_LABEL_MODES

RUNTIME_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "device",
        "generation_batch_size",
        "generation_max_batch_tokens",
        "soft_label_batch_size",
        "soft_label_backend",
        "teacher_device_map",
        *(f.name for f in fields(EngineConfig)),
        "push_to_hub",
        "hub_dataset_id",
        "hub_private",
    }
)
"""Settings that change how fast a run goes, or where it is published, not what it writes: a resumed run may change
them. The engines are: finished shards are kept whichever engine made them (each records the engine that
generated it); the soft labels are the same distribution whichever engine computes them, to float rounding."""

ROWS_STAGE = "rows"
"""The last stage of every job: the shard's soft-label rows (a saved dataset)."""
SOFT_LABEL_FIELDS = frozenset(
    {"soft_label_mode", "soft_label_top_k", "soft_label_draws", "soft_label_temperature", "logprob_dtype"}
)
"""The settings that feed only the soft-label rows: changing one redoes the rows and keeps everything before."""
DEFAULT_TOP_K = 64


@dataclass
class SoftLabelSettings:
    """How the teacher's distribution over each answer token is stored (:mod:`ssb_trl.soft_labels`)."""

    soft_label_mode: str = field(
        default="topk",
        metadata={
            "help": "topk: store the teacher's K most probable tokens per answer token (the tail's shape is lost: a "
            "biased target). sampled: store N draws from the teacher's distribution at soft_label_temperature, as "
            "the distinct drawn ids with log(count / N) (Sparse Logit Sampling, arXiv 2503.16870): an unbiased "
            "estimate of the full distribution, N entries per token (format version 3). Changing it redoes only the "
            "soft labels."
        },
    )
    soft_label_top_k: int = field(
        default=DEFAULT_TOP_K,
        metadata={"help": "Teacher log-probs stored per answer token (K) in topk mode; sampled mode stores N draws."},
    )
    soft_label_draws: int = field(
        default=32,
        metadata={
            "help": "Draws per answer token (N) in sampled mode, stored as N entries (as many bytes as top-N): "
            "seeded per row from --seed, so a rerun draws the same tokens."
        },
    )
    soft_label_temperature: float = field(
        default=2.0, metadata={"help": "Temperature of the stored log-probs (training's SSBConfig.temperature)."}
    )
    logprob_dtype: str = field(
        default="float16",
        metadata={
            "help": "Stored log-prob dtype: float16, float32, or uint8 = compact soft labels (format version 2: "
            "8-bit log-prob codes, step 1/16 nat, and ids in uint16 when the vocabulary has <= 65,536 ids; 3 bytes "
            "per top-K entry instead of 6)."
        },
    )
    soft_label_batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced pass."})
    soft_label_backend: str = field(
        default="transformers",
        metadata={
            "help": "What computes the soft labels. transformers: a teacher-forced pass of the loaded model, on one "
            "device (or sharded with --teacher_device_map auto). vllm: a local vLLM engine's prompt log-probs, the "
            "generation engine when that is one (no second copy of the teacher; --vllm_tensor_parallel_size shards "
            "it over GPUs), exact at any --soft_label_temperature. vllm_server: the server at "
            "--vllm_server_base_url (started with --max-logprobs >= K), at --soft_label_temperature 1 only. Both "
            "vLLM ones store top-K soft labels (no --soft_label_mode sampled)."
        },
    )
    teacher_device_map: str | None = field(
        default=None,
        metadata={
            "help": "Load the transformers teacher with this device_map ('auto': its layers spread over the visible "
            "GPUs, for a teacher bigger than one) for the soft-label pass; generation then goes through vLLM. "
            "One process only. Untested here (no GPU)."
        },
    )

    @property
    def soft_label_entries(self) -> int:
        """Entries stored per answer token: K in topk mode, N in sampled mode."""
        return self.soft_label_draws if self.soft_label_mode == "sampled" else self.soft_label_top_k

    @property
    def unused_soft_label_field(self) -> str:
        """The one of K and N this mode does not read: left out of the fingerprint, so changing it redoes nothing."""
        return "soft_label_top_k" if self.soft_label_mode == "sampled" else "soft_label_draws"

    def check_soft_label_settings(self) -> None:
        """Refuse settings that cannot make soft labels (called from the job configs' ``__post_init__``)."""
        checks = [
            (self.soft_label_mode in SOFT_LABEL_MODES, f"soft_label_mode must be one of {SOFT_LABEL_MODES}"),
            (self.soft_label_top_k >= 1, "soft_label_top_k must be >= 1"),
            (self.soft_label_draws >= 1, "soft_label_draws must be >= 1 (N draws per answer token)"),
            (
                self.soft_label_mode != "sampled" or self.soft_label_top_k == DEFAULT_TOP_K,
                f"soft_label_top_k={self.soft_label_top_k} applies to --soft_label_mode topk; sampled soft labels "
                f"store their soft_label_draws (N = {self.soft_label_draws}) draws as N entries per token. For the "
                f"bytes of top-{self.soft_label_top_k}, pass --soft_label_draws {self.soft_label_top_k} and drop "
                "--soft_label_top_k",
            ),
            (self.soft_label_temperature > 0, "soft_label_temperature must be > 0"),
            (self.logprob_dtype in LOGPROB_DTYPES, "logprob_dtype must be float16, float32 or uint8 (compact)"),
            (self.soft_label_batch_size >= 1, "soft_label_batch_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        refusal = scoring_refusal(self.soft_label_backend, self.soft_label_mode, self.soft_label_temperature)
        if refusal:
            raise ValueError(refusal)
        if self.soft_label_backend == "vllm_server" and not getattr(self, "vllm_server_base_url", None):
            raise ValueError(
                "--soft_label_backend vllm_server needs --vllm_server_base_url (e.g. http://127.0.0.1:8000)"
            )
        if self.teacher_device_map is not None and self.soft_label_backend != "transformers":
            raise ValueError(
                f"--teacher_device_map places the transformers teacher, but --soft_label_backend is "
                f"{self.soft_label_backend!r}: drop one of them (vLLM shards with --vllm_tensor_parallel_size)"
            )

    def check_vocabulary(self, vocab_size: int, model: str) -> None:
        """K (or N) must fit the teacher's vocabulary: checked before any file is written."""
        flag = "soft_label_draws" if self.soft_label_mode == "sampled" else "soft_label_top_k"
        if self.soft_label_entries > vocab_size:
            raise ValueError(
                f"{flag}={self.soft_label_entries} is larger than the vocabulary of {model!r} ({vocab_size} tokens): "
                f"pass a smaller --{flag} (at most {vocab_size}). Nothing was written."
            )


@dataclass
class JobSettings:
    """Where a job's dataset goes, how its work is cut into shards, and whether it is pushed to the Hub."""

    output_dir: str = field(default="ssb_data", metadata={"help": "Where the dataset and the work files go."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub (untested offline)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset as private."})

    def check_job_settings(self) -> None:
        """Refuse settings that cannot run (called from the job configs' ``__post_init__``)."""
        if getattr(self, "shard_size", 1) < 1:
            raise ValueError("shard_size must be >= 1")
        for name in ("generation_batch_size", "generation_max_batch_tokens"):  # the engine's limits, in every job
            value = getattr(self, name, None)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the default), got {value}")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id")

    def recorded_values(self) -> dict[str, Any]:
        """Settings recorded as what they are rather than as typed (a job's hook: a template file by its digest)."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What a run records of these settings (:func:`fingerprint`)."""
        return fingerprint(self)


def field_defaults(config: Any) -> dict[str, Any]:
    """Each setting's default: the value a run recorded before a version added that setting."""
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def fingerprint(config: Any) -> dict[str, Any]:
    """The settings that determine a job's output: every field except the runtime-only ones, the unused one of
    K and N left out, and values the job records as what they are (:meth:`JobSettings.recorded_values`)."""
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in RUNTIME_ONLY_FIELDS}
    if isinstance(config, SoftLabelSettings):
        settings.pop(config.unused_soft_label_field, None)
    settings.update(config.recorded_values())
    return settings

"""Training configuration: one dataclass per concern, validated when built (flags live in __main__.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then linear or cosine decay to min_lr_ratio * lr."""

    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_ratio: float = 0.05  # of the total optimizer steps; warmup_steps wins when set
    warmup_steps: int | None = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if self.max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0")


@dataclass
class LoraConfig:
    """Low-rank adapters on the attention and MLP projections; rank 0 means full fine-tuning."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError("lora rank must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError("lora dropout must be in [0, 1)")
        self.targets = tuple(self.targets)

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass
class TrainConfig:
    """The loop: batch geometry, length, evaluation, checkpoints, precision and parallelism."""

    out_dir: str
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_len: int = 256
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    eval_ratio: float = 0.05  # held-out fraction when no separate eval file is given
    eval_every: int = 0  # 0: only at the end (the end is always evaluated)
    save_every: int = 0  # resumable checkpoint every N steps and at the last step; 0: none (the export is always written)
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # auto: bf16 autocast on CUDA only
    fsdp: bool = False
    device: str = "auto"
    resume: str = "auto"  # auto | never | path to a checkpoint dir
    progress: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_len", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.epochs <= 0:
            raise ValueError("epochs must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if not 0 <= self.eval_ratio < 1:
            raise ValueError("eval_ratio must be in [0, 1)")
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("eval_every and save_every must be >= 0")
        if self.bf16 not in ("auto", "on", "off"):
            raise ValueError("bf16 must be auto, on or off")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

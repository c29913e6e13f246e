"""Training configuration: one dataclass per concern, validated when built (flags live in __main__.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model.config import QUANT_GROUP_SIZES  # the one list, shared with serving

SCHEDULES = ("linear", "cosine", "constant")

# Fine-tuning defaults per method (docs/TRAINING.md, "Defaults that learn"): LoRA trains a few small
# matrices from zero and wants a much higher rate than full fine-tuning, and no weight decay (decay pulls
# B A back towards the base: PEFT's examples and LLaMA-Factory's LoRA recipes use none). The cited LoRA
# rates (2e-4 in Unsloth's and PEFT's notebooks, 1e-4 in LLaMA-Factory's) are for 7B-class bases, and
# QLoRA lowers the rate as the base grows (2e-4 up to 13B, 1e-4 beyond); at 2e-4 the 135M default model
# did not learn a new fact in 30 steps, at 1e-3 it did (docs/TRAINING.md). 7B-class bases: --lr 2e-4.
# Full fine-tuning keeps 2e-5 and a mild decay.
LORA_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.0}
FULL_SFT_DEFAULTS = {"lr": 2e-5, "weight_decay": 0.1}
PRETRAIN_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.1}
# a small data set still gets enough optimizer steps: with the automatic batch size each epoch has at
# least MIN_STEPS_PER_EPOCH steps (batch 8, 4, 2 or 1), and a run has at least min_steps in all
MIN_STEPS_PER_EPOCH = 10
DEFAULT_MIN_STEPS = 30
AUTO_BATCH_SIZES = (8, 4, 2, 1)


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then linear or cosine decay to min_lr_ratio * lr."""

    lr: float = 3e-4
    weight_decay: float = 0.1  # the CLI picks per method: LORA_DEFAULTS / FULL_SFT_DEFAULTS below
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


# QLoRA-style fine-tuning: LoRA adapters over a frozen base whose projections are quantized at load
# (model/quant; the default model's int4 is its own Q4_1 weights as stored)
BASE_QUANTIZATIONS = ("none", "int8", "int4")


@dataclass
class BaseQuantization:
    """How the frozen base is held while adapters train on it: none (float) or int8 / int4 weights."""

    method: str = "none"
    group_size: int = 32  # int4: inputs per scale (a layer whose width it does not divide takes the next smaller)

    def __post_init__(self) -> None:
        if self.method not in BASE_QUANTIZATIONS:
            raise ValueError(f"quantization {self.method!r} is not one of {', '.join(BASE_QUANTIZATIONS)}")
        if self.group_size not in QUANT_GROUP_SIZES:
            raise ValueError(f"quantization group size {self.group_size} is not one of {QUANT_GROUP_SIZES}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def check_with(self, lora: LoraConfig, fsdp: bool) -> None:
        """What a quantized base allows: only adapters train (its codes have no gradient), no FSDP sharding."""
        if not self.enabled:
            return
        if not lora.enabled:
            raise ValueError(f"quantization {self.method} freezes the base in int8/int4 codes, which cannot be "
                             "fine-tuned themselves: train LoRA adapters over it with --lora-rank > 0")
        if fsdp:
            raise ValueError("FSDP does not shard a quantized base's packed weights; drop --fsdp (each process "
                             "holds the quantized base whole, DDP syncs the adapters)")


@dataclass
class TrainConfig:
    """The loop: batch geometry, length, evaluation, checkpoints, precision and parallelism."""

    out_dir: str
    batch_size: int = 8  # sequences per micro-batch per process; 0 = auto (fit_to_data)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_len: int = 256
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    min_steps: int = 0  # without max_steps: train at least this many optimizer steps (more epochs)
    eval_ratio: float = 0.05  # held-out fraction when no separate eval file is given
    eval_every: int = 0  # 0: only at the end (the end is always evaluated)
    # stop once an evaluation (every eval_every steps) has a loss at or below this: a run whose length
    # depends on when the model learns, not on a step count guessed in advance; None: run every step
    stop_eval_loss: float | None = None
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
        for name in ("grad_accum", "max_len", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_size < 0 or self.min_steps < 0:
            raise ValueError("batch_size (0 = auto) and min_steps must be >= 0")
        if self.epochs <= 0:
            raise ValueError("epochs must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if not 0 <= self.eval_ratio < 1:
            raise ValueError("eval_ratio must be in [0, 1)")
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("eval_every and save_every must be >= 0")
        if self.stop_eval_loss is not None and not self.eval_every:
            raise ValueError("stop_eval_loss needs eval_every (how often the stop condition is checked)")
        if self.bf16 not in ("auto", "on", "off"):
            raise ValueError("bf16 must be auto, on or off")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_to_data(cfg: TrainConfig, num_examples: int, world_size: int = 1) -> TrainConfig:
    """Resolves batch_size 0 (auto) and min_steps for a data set of num_examples sequences.

    Auto batch: the largest of AUTO_BATCH_SIZES whose epoch has >= MIN_STEPS_PER_EPOCH optimizer steps
    (40 chat lines: batch 4, as PEFT's recipe that learns them). Then, unless max_steps is set, a run
    shorter than min_steps optimizer steps trains min_steps (the epochs stretch)."""
    from dataclasses import replace

    batch = cfg.batch_size
    if batch == 0:
        per_step = cfg.grad_accum * world_size
        batch = next((b for b in AUTO_BATCH_SIZES if -(-num_examples // (b * per_step)) >= MIN_STEPS_PER_EPOCH),
                     AUTO_BATCH_SIZES[-1])
    out = replace(cfg, batch_size=batch)
    if cfg.max_steps is None and cfg.min_steps:
        global_batch = batch * cfg.grad_accum * world_size
        steps = max(1, -(-int(cfg.epochs * num_examples) // global_batch))
        if steps < cfg.min_steps:
            out = replace(out, max_steps=cfg.min_steps)
    return out

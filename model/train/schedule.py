"""AdamW and the learning-rate schedule: linear warmup, then linear or cosine decay.

The schedule matches transformers' get_linear_schedule_with_warmup / get_cosine_schedule_with_warmup
(with an optional floor, min_lr_ratio), written as a LambdaLR so its state is a plain step counter.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from model.train.config import OptimConfig


def warmup_steps_for(cfg: OptimConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return int(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr for the update made at optimizer step `step` (0-based)."""
    warmup = warmup_steps_for(cfg, total_steps)
    if step < warmup:
        return step / max(1, warmup)  # as transformers: the first warmup step has lr 0
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; norms, biases and embeddings get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # 1-D tensors are norm weights and biases; decaying them only hurts
        (no_decay if p.ndim < 2 or "embed_tokens" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))


def sync_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Sets each group's lr to what the (possibly rebuilt) schedule gives at its current step. A loaded
    optimizer carries the lr of the run that saved it, which a longer --max-steps changes."""
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)

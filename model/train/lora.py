"""LoRA: low-rank adapters on the network's linear projections, merged back before export.

A wrapped projection computes  W x + b + (alpha / r) * B (A x)  with A (r, in) random and B (out, r)
zero, so training starts from the base model exactly. Our projections are fused (qkv_proj,
gate_up_proj); one adapter on the fused weight equals PEFT adapters on its parts with a shared A.
Merging folds B A into W and puts the plain nn.Linear back, so the exported checkpoint has the base
architecture's tensor names and nothing LoRA-specific.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.train.config import LoraConfig


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default initialization
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return self.base(x) + update * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base projection with B A folded in (in the base weight's dtype)."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        self.base.weight.copy_((self.base.weight.float() + delta).to(self.base.weight.dtype))
        return self.base


def apply_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freezes every parameter, wraps each target projection in an adapter; returns how many."""
    if not cfg.enabled:
        raise ValueError("apply_lora needs rank > 0")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in cfg.targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"no nn.Linear named any of {cfg.targets} in the model")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replaces every LoRALinear by its merged nn.Linear, in place; returns how many were merged."""
    merged = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                merged += 1
    return merged


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total

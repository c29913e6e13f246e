"""LoRA: low-rank adapters on the network's linear projections, merged back before export.

A wrapped projection computes  W x + b + (alpha / r) * B (A x)  with A (r, in) random and B (out, r)
zero, so training starts from the base model exactly. Our projections are fused (qkv_proj,
gate_up_proj); one adapter on the fused weight equals PEFT adapters on its parts with a shared A.
Merging folds B A into W and puts the plain nn.Linear back, so the exported checkpoint has the base
architecture's tensor names and nothing LoRA-specific.

Over a quantized base (QLoRA: model/quant's Int8Linear / Int4Linear, frozen, differentiable in their input)
the adapters are in the model's float dtype and are never merged: B A folded into int8 or int4 codes would
round the update away, so the export is the adapter alone (PEFT layout) and serving adds it per row.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.train.config import LoraConfig


def is_quantized(module: nn.Module) -> bool:
    from model.quant.modules import QUANT_MODULES

    return isinstance(module, QUANT_MODULES)


def _codes(module: nn.Module) -> torch.Tensor:
    """A quantized module's integer weight: int8 `weight` or int4 `packed`."""
    return module.packed if hasattr(module, "packed") else module.weight


NO_MERGE_INTO_CODES = ("the update would be rounded away in int8/int4 codes; export the adapter alone "
                       "(--save-adapter-only) and serve it over the base with `glmserve serve --lora NAME=DIR`")


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (is_quantized(module) and hasattr(module, "in_features"))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 dtype: torch.dtype | None = None) -> None:
        """base: an nn.Linear (adapters in its weight's dtype) or a quantized linear (adapters in `dtype`,
        default fp32: the quantized codes say nothing of the model's compute dtype)."""
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        if isinstance(base, nn.Linear):
            dev, dtype = base.weight.device, base.weight.dtype
        else:
            dev, dtype = _codes(base).device, dtype or torch.float32
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default initialization
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor | None:  # an Int4Linear has no .weight (its codes are packed)
        return getattr(self.base, "weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return self.base(x) + update * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base projection with B A folded in (in the base weight's dtype)."""
        if not isinstance(self.base, nn.Linear):
            raise ValueError(f"cannot merge a LoRA adapter into a quantized {type(self.base).__name__}: "
                             + NO_MERGE_INTO_CODES)
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        self.base.weight.copy_((self.base.weight.float() + delta).to(self.base.weight.dtype))
        return self.base


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in: its float parameters' (norms stay float in a quantized model)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freezes every parameter, wraps each target projection (float or quantized) in an adapter; returns
    how many. A quantized embedding has no parameters: nothing there becomes trainable."""
    if not cfg.enabled:
        raise ValueError("apply_lora needs rank > 0")
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = _float_dtype(model)
    wrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in cfg.targets and _adaptable(child):
                setattr(parent, name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout, dtype))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"no linear projection named any of {cfg.targets} in the model")
    return wrapped


def has_quantized_base(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) and is_quantized(m.base) for m in model.modules())


def merge_lora(model: nn.Module) -> int:
    """Replaces every LoRALinear by its merged nn.Linear, in place; returns how many were merged.
    Refuses (before changing anything) when an adapter sits on a quantized projection."""
    if has_quantized_base(model):
        raise ValueError("cannot merge LoRA adapters into a quantized base: " + NO_MERGE_INTO_CODES)
    merged = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                merged += 1
    return merged


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once, and so are the weights a
    quantized module holds as int codes (buffers, not parameters; a tied embedding and lm_head share them)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    codes: set[int] = set()
    for m in model.modules():
        if is_quantized(m):
            ptr = _codes(m).data_ptr()  # shared by a tied embedding and lm_head
            if ptr not in codes:
                codes.add(ptr)
                total += _logical_numel(m)
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def _logical_numel(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return module.in_features * module.out_features
    return module.num_embeddings * module.embedding_dim

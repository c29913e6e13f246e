"""The serving-side LoRA projection: whatever linear module is there (nn.Linear, oneDNN-packed,
quantized) plus, for the rows of each adapter in this step, x_rows @ A^T @ B^T (B pre-scaled).

One forward serves a mixed batch: the step's rows are grouped by adapter once (LoRAStep, built by the
manager from the runner's per-step metadata) and every wrapped projection adds each group's low-rank
product into its rows. Rows of the bare base get nothing added, so with no adapter in a step the module
costs one attribute check over the base call.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoRAGroup:
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # one resident adapter's (A, B) pairs
    rows: torch.Tensor | None  # (n,) int64 row indices into the step's flattened tokens; None = every row
    start: int = 0  # when the rows are one contiguous run: [start, end) (a slice, no gather)
    end: int = 0


@dataclass
class LoRAStep:
    """Which rows of the current forward belong to which adapter; empty = the bare base only."""

    groups: list[LoRAGroup] = field(default_factory=list)


class LoRAProjection(nn.Module):
    def __init__(self, base: nn.Module, key: tuple[int, str], step: LoRAStep) -> None:
        super().__init__()
        self.base = base
        self.key = key  # (layer index, our module name), as in AdapterWeights.weights
        self.step = step  # shared with the manager, which swaps its groups every step
        self.in_features = getattr(base, "in_features", None)
        self.out_features = getattr(base, "out_features", None)

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (dtype, device) sees the base's
        return self.base.weight

    @property
    def bias(self):
        return getattr(self.base, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.step.groups or x.dim() != 2:  # training's (B, T, hidden) never carries adapters
            return y
        for group in self.step.groups:
            ab = group.weights.get(self.key)
            if ab is None:  # this adapter does not target this projection
                continue
            a, b = ab
            if group.rows is None:
                xs = x[group.start:group.end]  # (n, in)
                y[group.start:group.end] += (xs @ a.t().to(xs.dtype)) @ b.t().to(xs.dtype)
            else:
                xs = x.index_select(0, group.rows)
                y.index_add_(0, group.rows, (xs @ a.t().to(xs.dtype)) @ b.t().to(xs.dtype))
        return y

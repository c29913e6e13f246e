"""The serving-side LoRA projection: whatever linear module is there (nn.Linear, oneDNN-packed,
quantized) plus, for the rows of each adapter in this step, x_rows @ A^T @ B^T (B pre-scaled).

One forward serves a mixed batch with stacked weights: per projection, the A of every adapter in the
step are stacked (sum of ranks, in) and their B side by side (out, sum of ranks). The adapter rows are
gathered once, multiplied by the stacked A, masked so each row keeps only its own adapter's rank
columns, multiplied by the stacked B and added back: five kernel calls per projection however many
adapters share the step (LoRAStep, built by the manager from the runner's per-step metadata). Rows of
the bare base get nothing added, so with no adapter in a step the module costs one attribute check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from model.engine.cpu_packing import bucket_rows


@dataclass
class Stacked:
    a_t: torch.Tensor  # (in, sum r): A stacked, transposed once so the product is a plain row-major GEMM
    b_t: torch.Tensor  # (sum r, out), scaling folded in
    mask: torch.Tensor  # (adapter rows, sum r): 1 where the column belongs to the row's adapter
    packed: tuple[torch.Tensor, torch.Tensor] | None = None  # CPU: A and B in oneDNN's layout (cpu_packing.py)


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, out_features: int) -> torch.Tensor:
    """x @ W^T with W reordered for oneDNN: MKL runs these skinny products at a fraction of the speed.
    Rows are bucketed as PackedLinear does, so oneDNN caches few primitives."""
    rows = x.shape[0]
    padded = bucket_rows(rows)
    if padded != rows:
        x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
    y = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, None, "none", [], "")
    return y[:rows] if padded != rows else y


@dataclass
class LoRAStep:
    """This forward's adapter rows and, per projection key, the stacked weights; empty = base only."""

    rows: torch.Tensor | None = None  # (n,) int64 rows of the flattened tokens that have an adapter
    all_rows: bool = False  # every row has an adapter: no gather / scatter
    stacked: dict[tuple[int, str], Stacked] = field(default_factory=dict)


class LoRAProjection(nn.Module):
    def __init__(self, base: nn.Module, key: tuple[int, str], step: LoRAStep) -> None:
        super().__init__()
        self.base = base
        self.key = key  # (layer index, our module name), as in AdapterWeights.weights
        self.step = step  # shared with the manager, which refills it every step
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
        step = self.step
        if step.rows is None or x.dim() != 2:  # training's (B, T, hidden) never carries adapters
            return y
        w = step.stacked.get(self.key)
        if w is None:  # no adapter of this step targets this projection
            return y
        xs = x if step.all_rows else x.index_select(0, step.rows)  # (n, in)
        if w.packed is not None:
            h = _packed_linear(xs, w.packed[0], w.a_t.shape[1]).mul_(w.mask)
            delta = _packed_linear(h, w.packed[1], w.b_t.shape[1])
        else:
            h = (xs @ w.a_t).mul_(w.mask)  # (n, sum r): each row keeps its own adapter's columns
            delta = h @ w.b_t  # (n, out)
        if step.all_rows:
            return y.add_(delta)
        return y.index_add_(0, step.rows, delta)

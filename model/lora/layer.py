"""The serving-side LoRA projection: whatever linear module is there (nn.Linear, oneDNN-packed,
quantized) plus, for each adapter's rows of this step, x_rows @ A^T @ B^T (B pre-scaled).

A segmented product, as punica's SGMV: the runner orders a step's sequences by adapter, so each
adapter's rows are contiguous runs (LoRASegment), and each run is multiplied by its own adapter's A
and B only: work proportional to the rows' own ranks, not to the sum of every adapter's in the step
(a stacked A with a per-row mask cost 4x the products with four adapters, and measured 0.78 of the
bare base's tok/s at rank 8). Three kernel calls per run (shrink, expand, add into the run's rows);
rows of the bare base get nothing added, and a step without adapter rows costs one attribute check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from model.engine.cpu_packing import bucket_rows


@dataclass
class AdapterPair:
    """One adapter's weights for one projection, on the device in the model's dtype."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r), scaling folded in
    packed: tuple[torch.Tensor, torch.Tensor] | None = None  # CPU: A and B in oneDNN's layout (cpu_packing.py)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """(n, in) -> (n, out): x @ A^T @ B^T."""
        if self.packed is None:
            return (x @ self.a.t()) @ self.b.t()
        return _packed_linear(_packed_linear(x, self.packed[0]), self.packed[1])


def _packed_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
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
    """This forward's adapter runs and their weights per projection key; no segments = base only."""

    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (lora_id, first row, end row)
    weights: dict[int, dict[tuple[int, str], AdapterPair]] = field(default_factory=dict)  # lora_id -> key -> pair


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
        if not step.segments or x.dim() != 2:  # training's (B, T, hidden) never carries adapters
            return y
        for lora_id, start, end in step.segments:
            pair = step.weights[lora_id].get(self.key)
            if pair is not None:  # None: this adapter does not target this projection
                y[start:end].add_(pair.delta(x[start:end]))
        return y

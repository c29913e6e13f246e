"""The serving-side LoRA projection: whatever linear module is there (nn.Linear, oneDNN-packed,
quantized) plus, for the rows of each adapter in this step, x_rows @ A^T @ B^T (B pre-scaled).

One forward serves a mixed batch in three to four kernel calls per projection, however many adapters
share the step (the call count, not the arithmetic, is what a 32-row decode step pays for on a CPU):
  shrink  h = x @ [A_1; ...; A_k]^T           one GEMM for every adapter of the step, (rows, k * R)
  gather  each adapter's rows, its own R columns only, into (k, L, R) (L: the most rows of one adapter)
  expand  (k, L, R) @ (k, R, out) as one batched GEMM, added to the rows (in place when they line up)
The expand, the larger half for qkv and gate_up, does no work for other adapters' columns (punica's
SGMV idea: a segment per adapter); the shrink does (k * R columns), which is cheap next to the call a
per-adapter shrink would cost. Ranks are zero-padded to the step's largest per projection (exact:
padded columns add zeros). Rows of the bare base get nothing added; with no adapter row in the step
the module costs one attribute check. LoRAStep is built by the manager from the runner's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from model.engine.cpu_packing import bucket_rows


@dataclass
class Stacked:
    """One projection's weights for the step's adapters (in step order), zero-padded to rank R."""

    a_t: torch.Tensor  # (in, k * R): A stacked, transposed once so the shrink is a plain row-major GEMM
    b: torch.Tensor  # (k, R, out): B^T per adapter, scaling folded in
    a_packed: torch.Tensor | None = None  # CPU: A (k * R, in) in oneDNN's layout (cpu_packing.py)

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a_t if self.a_packed is None else _packed_linear(x, self.a_packed)


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
    """This forward's adapter rows and, per projection key, the stacked weights; no gather = base only."""

    gather: torch.Tensor | None = None  # (k * L,) rows of h viewed (rows * k, R): row * k + adapter position
    valid: torch.Tensor | None = None  # (k * L, 1) 0 at padding (adapters with fewer than L rows), else None
    rows: torch.Tensor | None = None  # (k * L,) output row of each gathered row; None: they are 0..rows-1
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
        if step.gather is None or x.dim() != 2:  # training's (B, T, hidden) never carries adapters
            return y
        w = step.stacked.get(self.key)
        if w is None:  # no adapter of this step targets this projection
            return y
        k, rank, out = w.b.shape
        h = w.shrink(x).view(-1, rank).index_select(0, step.gather)  # (k * L, R): each row's own columns
        if step.valid is not None:
            h.mul_(step.valid)
        h = h.view(k, -1, rank)
        if step.rows is None and y.is_contiguous():  # rows already in adapter order: add in place
            y.view(k, -1, out).baddbmm_(h, w.b)
            return y
        rows = step.rows if step.rows is not None else torch.arange(y.shape[0], device=y.device)
        return y.index_add_(0, rows, torch.bmm(h, w.b).view(-1, out))

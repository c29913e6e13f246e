"""CPU speed trick: serve nn.Linear layers from oneDNN-packed fp32/bf16 weights.

On this class of CPU, MKL's sgemm runs the skinny shapes of decoding (a few to a few dozen rows
against 576-wide weights) at under 100 GFLOP/s; oneDNN with weights reordered once into its blocked
layout runs the same products 2-2.5x faster, and batch-1 decoding gets much closer to the memory
bandwidth limit. The network code is untouched: the runner swaps modules after loading, and
`EngineConfig.enforce_eager` turns it off.
"""
from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """y = x W^T + b with W held as a oneDNN tensor. Inference only."""

    def __init__(self, linear: nn.Linear, batch_hint: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # reordered once into oneDNN's blocked layout but kept as a dense tensor: inputs and outputs
        # stay plain tensors, so no per-call format conversion
        weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.register_buffer("weight", weight, persistent=False)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.is_contiguous() and bucket_rows(x.shape[0]) == x.shape[0]:
            # a decode batch as the layers pass it: the op alone (the reshapes and slice cost ~5 us a call)
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (rows, in)
        rows = x2.shape[0]
        padded = bucket_rows(rows)
        if padded != rows:
            x2 = torch.cat([x2, x2.new_zeros(padded - rows, self.in_features)])
        y = torch.ops.mkldnn._linear_pointwise(x2.contiguous(), self.weight, self.bias, "none", [], "")
        return y[:rows].view(*shape[:-1], self.out_features)


def bucket_rows(rows: int) -> int:
    """oneDNN caches a primitive per distinct row count, and a server sees hundreds of them (every prefill
    chunk length): memory grew by ~0.5 GiB in minutes. Small batches keep their exact size (decode speed),
    larger ones round up to a multiple of 16, so at most ~40 shapes exist for a 512-token budget."""
    return rows if rows <= 8 else -(-rows // 16) * 16


def mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module) -> int:
    """Replaces every nn.Linear in model by a PackedLinear; returns how many were packed."""
    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.device.type == "cpu":
                setattr(module, child_name, PackedLinear(child))
                count += 1
    return count

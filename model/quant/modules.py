"""Inference-only modules that stand in for nn.Linear and nn.Embedding with int8 or int4 weights.

Each takes and returns the model's float dtype; the matmul itself runs in bf16 (kernels.py says why).
A tied embedding and lm_head share one set of quantized tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from model.quant.kernels import COMPUTE_DTYPE, gather_int4_rows, int4_mm, int8_mm


class _QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", bias, persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (rows, in)
        y = self._mm(x2.to(COMPUTE_DTYPE).contiguous()).to(x.dtype)  # (rows, out)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)


class Int8Linear(_QuantLinear):
    """y = x (w * scales)^T + b; w (out, in) int8, one bf16 scale per output channel."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("scales", scales.to(COMPUTE_DTYPE), persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return int8_mm(x, self.weight, self.scales)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel"


class Int4Linear(_QuantLinear):
    """y = x W^T + b with W int4 in groups of `group_size` along the input, a bf16 scale and zero per group."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, in_features: int,
                 out_features: int, bias: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(COMPUTE_DTYPE), persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return int4_mm(x, self.packed, self.group_size, self.scales_and_zeros)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group {self.group_size}"


class Int8Embedding(nn.Module):
    """Row lookup of an int8 table with one scale per row: the layout of Int8Linear, so a tied lm_head
    shares it."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.dtype = dtype
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("scales", scales.to(COMPUTE_DTYPE), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.dtype) * self.scales[ids].to(self.dtype).unsqueeze(-1)

    def as_linear(self) -> Int8Linear:
        return Int8Linear(self.weight, self.scales)


class Int4Embedding(nn.Module):
    """Row lookup read straight from an Int4Linear's CPU-packed weight (kernels.gather_int4_rows), so a tied
    lm_head and the embedding hold one int4 copy."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, dtype: torch.dtype
                 ) -> None:
        super().__init__()
        self.num_embeddings = packed.shape[0]
        self.embedding_dim = packed.shape[1] * 2
        self.group_size, self.dtype = group_size, dtype
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(COMPUTE_DTYPE), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        q = gather_int4_rows(self.packed, flat).to(self.dtype)  # (T, K)
        sz = self.scales_and_zeros[:, flat].to(self.dtype)  # (K / g, T, 2)
        scale = sz[..., 0].t().repeat_interleave(self.group_size, dim=1)  # (T, K)
        zero = sz[..., 1].t().repeat_interleave(self.group_size, dim=1)
        return ((q - 8) * scale + zero).view(*ids.shape, self.embedding_dim)

    def as_linear(self) -> Int4Linear:
        return Int4Linear(self.packed, self.scales_and_zeros, self.group_size, self.embedding_dim,
                          self.num_embeddings)


QUANT_MODULES = (Int8Linear, Int4Linear, Int8Embedding, Int4Embedding)

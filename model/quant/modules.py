"""Modules that stand in for nn.Linear and nn.Embedding with int8 or int4 weights.

Each takes and returns the model's float dtype; the matmul itself runs in bf16 (kernels.py says why).
A tied embedding and lm_head share one set of quantized tensors.

The linears are differentiable in their input, for LoRA training over a frozen quantized base (QLoRA):
the weights are buffers and get no gradient, and the backward dequantizes W a chunk at a time, so no float
copy of a whole weight exists. Without a gradient to track (serving: inference mode) forward is the kernel
call alone, as before.
"""
from __future__ import annotations

import torch
from torch import nn

from model.kernels.qlinear import int4_linear, int8_linear
from model.quant.kernels import (CPU_PACK_BLOCK_N, COMPUTE_DTYPE, gather_int4_rows, int4_mm, int4_rows_gatherable,
                                 int8_mm)

BACKWARD_CHUNK = 1024  # rows (or columns) of W dequantized at once in backward: a few MB of float, not the table


class _QuantMatmul(torch.autograd.Function):
    """y = x W^T through the module's kernel; dx = dy W, W dequantized chunk by chunk (module.grad_input).
    x and y are in the model's dtype, so the gradient is computed in it too (not in the kernel's bf16)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: "_QuantLinear") -> torch.Tensor:  # noqa: ANN001
        ctx.module = module  # the frozen weights stay in the module: nothing of x needs saving
        return module._kernel(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205
        return ctx.module.grad_input(grad_out), None


class _QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", bias, persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grad_input(self, grad_out: torch.Tensor) -> torch.Tensor:
        """(rows, out) -> (rows, in): grad_out @ W in grad_out's dtype."""
        raise NotImplementedError

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor:
        """(rows, in) in the model's dtype -> (rows, out) in it, through the bf16 kernel."""
        return self._mm(x2.to(COMPUTE_DTYPE).contiguous()).to(x2.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (rows, in)
        if torch.is_grad_enabled() and x.requires_grad:  # training an adapter above or below this layer
            y = _QuantMatmul.apply(x2, self)
        else:
            y = self._kernel(x2)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)


class Int8Linear(_QuantLinear):
    """y = x (w * scales)^T + b; w (out, in) int8, one bf16 scale per output channel."""

    # serving on CPU: the C kernel with fp32 activations (model/kernels/qlinear.py) instead of PyTorch's bf16
    # one, where the runner's start-up measurement chose it (model/engine/cpu_choices.py choose_int8_kernel)
    cpu_kernel = False

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("scales", scales.to(COMPUTE_DTYPE), persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return int8_mm(x, self.weight, self.scales)

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor:
        if self.cpu_kernel and x2.dtype is torch.float32:
            return int8_linear(x2.contiguous(), self.weight, self.scales)
        return super()._kernel(x2)

    def grad_input(self, grad_out: torch.Tensor) -> torch.Tensor:
        grad_in = grad_out.new_zeros(grad_out.shape[0], self.in_features)
        for i in range(0, self.out_features, BACKWARD_CHUNK):
            rows = slice(i, i + BACKWARD_CHUNK)
            w = self.weight[rows].to(grad_out.dtype) * self.scales[rows].to(grad_out.dtype).unsqueeze(1)
            grad_in.addmm_(grad_out[:, rows], w)
        return grad_in

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel"


class Int4Linear(_QuantLinear):
    """y = x W^T + b with W int4 in groups of `group_size` along the input, a bf16 scale and zero per group."""

    cpu_kernel = False  # as Int8Linear's: the C kernel (model/kernels/qlinear.py) where the runner chose it

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, in_features: int,
                 out_features: int, bias: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(COMPUTE_DTYPE), persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return int4_mm(x, self.packed, self.group_size, self.scales_and_zeros)

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor:
        if self.cpu_kernel and x2.dtype is torch.float32:
            return int4_linear(x2.contiguous(), self.packed, self.group_size, self.scales_and_zeros,
                               self.out_features)
        return super()._kernel(x2)

    def grad_input(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self.out_features % CPU_PACK_BLOCK_N == 0 and int4_rows_gatherable(self.packed.device.type):
            return self._grad_input_by_rows(grad_out)
        return self._grad_input_by_kernel(grad_out)

    def _grad_input_by_rows(self, grad_out: torch.Tensor) -> torch.Tensor:
        """W's rows decoded from the CPU-packed layout (as Int4Embedding looks rows up)."""
        grad_in = grad_out.new_zeros(grad_out.shape[0], self.in_features)
        g = self.group_size
        for i in range(0, self.out_features, BACKWARD_CHUNK):
            rows = torch.arange(i, min(i + BACKWARD_CHUNK, self.out_features), device=self.packed.device)
            q = gather_int4_rows(self.packed, rows).to(grad_out.dtype)  # (n, K)
            sz = self.scales_and_zeros[:, i: i + rows.numel()].to(grad_out.dtype)  # (K / g, n, 2)
            scale = sz[..., 0].t().repeat_interleave(g, dim=1)  # (n, K)
            zero = sz[..., 1].t().repeat_interleave(g, dim=1)
            grad_in.addmm_(grad_out[:, i: i + rows.numel()], (q - 8) * scale + zero)
        return grad_in

    def _grad_input_by_kernel(self, grad_out: torch.Tensor) -> torch.Tensor:
        """Any packed layout (CUDA's tiles): the kernel itself applied to identity rows gives W's columns,
        W[:, k0:k1]^T = I[k0:k1] @ W^T (bf16-rounded, as the forward's own product is)."""
        grad_in = grad_out.new_empty(grad_out.shape[0], self.in_features)
        for k0 in range(0, self.in_features, BACKWARD_CHUNK):
            k1 = min(k0 + BACKWARD_CHUNK, self.in_features)
            n = torch.arange(k1 - k0, device=self.packed.device)
            eye = torch.zeros(k1 - k0, self.in_features, dtype=COMPUTE_DTYPE, device=self.packed.device)
            eye[n, n + k0] = 1
            w_cols_t = self._mm(eye).to(grad_out.dtype)  # (k1 - k0, N)
            grad_in[:, k0:k1] = grad_out @ w_cols_t.t()
        return grad_in

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

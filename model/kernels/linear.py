"""nn.Linear served by the hand-written decode-sized product (model/kernels/csrc/linear.c).

At 1-4 rows a projection is bound by reading its weight, and PyTorch's fastest fp32 one-row product read
weights at 20 GB/s on a host whose plain read runs at 35; at ~32 rows oneDNN's packed product ran at ~165
GFLOP/s of a ~300 peak. The kernel reads the model's own weight tensor in place (no copy, no repack), so a
tied lm_head stays one tensor with the embedding and swapping it in costs no memory. Row counts past
MAX_ROWS (prefill chunks) go to F.linear on the same weight: MKL's sgemm is good at large M.
Whether a shape is served by it is measured at start-up (model/engine/cpu_choices.py).
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import build

DTYPES = (torch.float32,)  # the weight dtypes the kernel serves
MAX_ROWS = 64  # past this the register-blocked tiles stop beating MKL's sgemm (prefill sizes)


def library() -> ctypes.CDLL | None:
    """The compiled kernel with its signatures declared, or None (no compiler, build failed, kernels off)."""
    lib = build.load("linear")
    if lib is not None and not hasattr(lib, "_glmserve_declared"):
        ptr, size = ctypes.c_void_p, ctypes.c_long
        lib.linear_f32.argtypes = [ptr, ptr, ptr, ptr, size, size, size, ctypes.c_int]
        lib.linear_f32.restype = None
        lib.linear_simd_level.argtypes = []
        lib.linear_simd_level.restype = ctypes.c_int
        lib._glmserve_declared = True
    return lib


def available() -> bool:
    return library() is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           threads: int | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) through the kernel: x (..., K) fp32 contiguous, weight (N, K) fp32
    contiguous. Raises ValueError on inputs the kernel does not take (callers that may see them check first,
    as KernelLinear does); RuntimeError when the kernel is not available."""
    lib = library()
    if lib is None:
        raise RuntimeError("the linear kernel is not available on this host (see model/kernels/build.py)")
    n, k = weight.shape
    if (x.dtype != torch.float32 or weight.dtype != torch.float32 or x.shape[-1] != k or not x.is_contiguous()
            or not weight.is_contiguous() or x.device.type != "cpu" or weight.device.type != "cpu"):
        raise ValueError(f"linear kernel takes contiguous fp32 CPU x (..., {k}) and weight (N, K); got x "
                         f"{tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"linear kernel bias must be contiguous fp32 ({n},)")
    y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
    lib.linear_f32(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                   x.numel() // k if k else 0, n, k, torch.get_num_threads() if threads is None else threads)
    return y


class KernelLinear(nn.Module):
    """y = x W^T + b by the C kernel for up to MAX_ROWS rows, F.linear beyond (and for anything the kernel
    does not take: other dtypes, non-contiguous inputs, autograd). Holds the nn.Linear's own Parameters."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: tied weights stay tied, nothing is copied
        self.bias = linear.bias
        self._fn = library().linear_f32 if available() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, fn = self.weight, self.bias, self._fn
        k = self.in_features
        rows = x.numel() // k if k else 0
        if (fn is None or rows > MAX_ROWS or x.dtype is not torch.float32 or w.dtype is not torch.float32
                or not x.is_contiguous() or x.device.type != "cpu" or (torch.is_grad_enabled() and (
                    w.requires_grad or x.requires_grad))):
            return F.linear(x, w, b)
        n = self.out_features
        y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        fn(x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), rows, n, k,
           torch.get_num_threads())
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

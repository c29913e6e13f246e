"""nn.Linear served by the hand-written decode-sized product (model/kernels/csrc/linear.c).

At 1-4 rows a projection is bound by reading its weight, and PyTorch's fastest fp32 one-row product read
weights at 20 GB/s on a host whose plain read runs at 35; at ~32 rows oneDNN's packed product ran at ~165
GFLOP/s where 2 cores' fp32 FMAs peak at ~225 (a register-only FMA loop on this host). The kernel reads the model's own weight tensor in place (no copy, no repack), so a
tied lm_head stays one tensor with the embedding and swapping it in costs no memory. Row counts past
MAX_ROWS go to F.linear on the same weight (MKL's sgemm), or past a lower limit the start-up timing found
(a host whose oneDNN multiplies bf16 on AMX beat the kernel from ~8 rows) to a packed copy or F.linear.
Whether a shape is served by it is measured at start-up (model/engine/cpu_choices.py).
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import build

DTYPES = (torch.float32, torch.bfloat16)  # the weight dtypes the kernel serves (x, bias and y the same)
# Past this, F.linear. Rows are cut into L2-sized blocks in the kernel, and at 128-1024 rows of the default
# model's shapes it ran 188-213 GFLOP/s against MKL's 149-197 (oneDNN packed 199-216), so prefill chunks of
# a usual token budget stay on it too; no larger sizes were measured.
MAX_ROWS = 1024


def library() -> ctypes.CDLL | None:
    """The compiled kernel with its signatures declared, or None (no compiler, build failed, kernels off)."""
    lib = build.load("linear")
    if lib is not None and not hasattr(lib, "_glmserve_declared"):
        ptr, size = ctypes.c_void_p, ctypes.c_long
        for fn in (lib.linear_f32, lib.linear_bf16):
            fn.argtypes = [ptr, ptr, ptr, ptr, size, size, size, ctypes.c_int]
            fn.restype = None
        lib.linear_simd_level.argtypes = []
        lib.linear_simd_level.restype = ctypes.c_int
        lib._glmserve_declared = True
    return lib


def available() -> bool:
    return library() is not None


def entry(dtype: torch.dtype):
    """The C function for weights of this dtype, or None."""
    lib = library()
    if lib is None or dtype not in DTYPES:
        return None
    return lib.linear_f32 if dtype == torch.float32 else lib.linear_bf16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           threads: int | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) through the kernel: x (..., K) and weight (N, K), contiguous, both fp32 or
    both bf16 (fp32 sums, the output rounded to bf16 as PyTorch rounds it). Raises ValueError on inputs the kernel does not take (callers that may see them check first,
    as KernelLinear does); RuntimeError when the kernel is not available."""
    lib = library()
    if lib is None:
        raise RuntimeError("the linear kernel is not available on this host (see model/kernels/build.py)")
    n, k = weight.shape
    dtype = weight.dtype
    if (dtype not in DTYPES or x.dtype != dtype or x.shape[-1] != k or not x.is_contiguous()
            or not weight.is_contiguous() or x.device.type != "cpu" or weight.device.type != "cpu"):
        raise ValueError(f"linear kernel takes contiguous fp32 or bf16 CPU x (..., {k}) and weight (N, K) of one "
                         f"dtype; got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if bias is not None and (bias.dtype != dtype or bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"linear kernel bias must be contiguous ({n},) {dtype}")
    y = torch.empty(*x.shape[:-1], n, dtype=dtype)
    entry(dtype)(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                   x.numel() // k if k else 0, n, k, torch.get_num_threads() if threads is None else threads)
    return y


class KernelLinear(nn.Module):
    """y = x W^T + b by the C kernel for up to max_rows rows; beyond, `above` (a oneDNN-packed copy, where the
    start-up timing chose one: model/engine/cpu_choices.py) or F.linear; F.linear also for anything the kernel
    does not take (other dtypes, non-contiguous inputs, autograd). Holds the nn.Linear's own Parameters."""

    def __init__(self, linear: nn.Linear, max_rows: int = MAX_ROWS, above: nn.Module | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # the same Parameters (None for no bias): tied weights stay tied, nothing is copied
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        w = linear.weight
        # a weight the kernel cannot read in place keeps F.linear (checked once: modules keep their weight)
        b = linear.bias
        readable = w.is_contiguous() and w.device.type == "cpu" and (b is None or (b.dtype == w.dtype
                                                                                  and b.is_contiguous()))
        self.kernel = entry(w.dtype) if readable else None
        self._dtype = w.dtype
        self.max_rows = max_rows
        self.add_module("above", above)  # rows past max_rows: a module computing the same product, or None: F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # per-call cost is the point (a 576x576 product is ~30 us): the Parameters straight from their dict
        # (nn.Module.__getattr__ costs ~0.6 us each), x.is_cpu over x.device.type, one torch op (the output)
        params = self._parameters
        w, b, fn = params["weight"], params["bias"], self.kernel
        k = self.in_features
        rows = x.numel() // k if k else 0
        if (fn is None or rows > self.max_rows or x.dtype is not self._dtype or w.dtype is not self._dtype
                or not x.is_contiguous() or not x.is_cpu or (torch.is_grad_enabled() and (
                    w.requires_grad or x.requires_grad))):
            above = self._modules["above"]
            if above is not None and rows > self.max_rows and x.dtype is self._dtype and not torch.is_grad_enabled():
                return above.forward(x)  # not a second module call (~2 us, up to 120 a step): this one is the layer
            return F.linear(x, w, b)
        n = self.out_features
        y = torch.empty(*x.shape[:-1], n, dtype=x.dtype)
        fn(x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), rows, n, k,
           torch.get_num_threads())
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"max_rows={self.max_rows}")

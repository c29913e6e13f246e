"""The int8 weight-only linear with fp32 activations as one C call (csrc/qlinear.c says how and why).

Int8Linear (model/quant/modules.py) calls `int8_linear` in place of PyTorch's bf16 kernel when the runner's
start-up measurement chose it (model/engine/cpu_choices.py `choose_int8_kernel`): the same layout (w (N, K)
int8, one bf16 scale per row), no copy, so a tied embedding and lm_head still share one table.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from model.kernels import build

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("qlinear")
    if lib is None:
        return None
    lib.int8_linear_f32.argtypes = [_P, _L, _L, _P, _L, _P, _P, _P, _I]
    lib.int8_linear_f32.restype = None
    lib.int8_linear_has_bf16_dot.argtypes = []
    lib.int8_linear_has_bf16_dot.restype = _I
    return lib


def available() -> bool:
    """Compiled with AVX512_BF16's dot product: without it the portable loop only loses to PyTorch's kernel."""
    lib = library()
    return lib is not None and bool(lib.int8_linear_has_bf16_dot())


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 contiguous, weight (N, K) int8 contiguous, scales (N,) bf16 -> (M, N) fp32."""
    if x.dtype is not torch.float32 or weight.dtype is not torch.int8 or scales.dtype is not torch.bfloat16:
        raise ValueError(f"int8_linear: fp32 x, int8 weight, bf16 scales needed; got {x.dtype}, {weight.dtype}, "
                         f"{scales.dtype}")
    if not (x.is_contiguous() and weight.is_contiguous() and scales.is_contiguous()):
        raise ValueError("int8_linear: contiguous tensors needed")
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k or scales.shape[0] != n:
        raise ValueError(f"int8_linear: x {tuple(x.shape)}, weight {tuple(weight.shape)}, scales {tuple(scales.shape)}")
    y = torch.empty(m, n)
    library().int8_linear_f32(x.data_ptr(), m, k, weight.data_ptr(), n, scales.data_ptr(), None, y.data_ptr(),
                              torch.get_num_threads())
    return y

"""The int8 and int4 weight-only linears with fp32 activations as one C call each (csrc/qlinear.c says how
and why).

Int8Linear and Int4Linear (model/quant/modules.py) call them in place of PyTorch's bf16 kernels when the
runner's start-up measurement chose it (model/engine/cpu_choices.py `choose_quant_kernels`). Both read the
weights as the modules hold them (int8: w (N, K), one bf16 scale per row; int4: PyTorch's CPU-packed layout
with its (K / g, N, 2) scales and zeros), no copy, so a tied embedding and lm_head still share one table.
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
    lib.int4_linear_f32.argtypes = [_P, _L, _L, _P, _L, _L, _P, _P, _I]
    lib.int4_linear_f32.restype = _I
    lib.int4_linear_available.argtypes = []
    lib.int4_linear_available.restype = _I
    lib.int8_linear_available.argtypes = []
    lib.int8_linear_available.restype = _I
    return lib


def available() -> bool:
    """Compiled with AVX512_VNNI's int16 dot product: without it the portable loop only loses to PyTorch's kernel."""
    lib = library()
    return lib is not None and bool(lib.int8_linear_available())


def _check(what: str, x: torch.Tensor, codes: torch.Tensor, codes_dtype: torch.dtype, codes_name: str,
           scales: torch.Tensor) -> None:
    """The dtypes and layout both kernels read: fp32 x, their codes, bf16 scales, all contiguous."""
    if x.dtype is not torch.float32 or codes.dtype is not codes_dtype or scales.dtype is not torch.bfloat16:
        raise ValueError(f"{what}: fp32 x, {codes_name}, bf16 scales needed; got {x.dtype}, {codes.dtype}, "
                         f"{scales.dtype}")
    if not (x.is_contiguous() and codes.is_contiguous() and scales.is_contiguous()):
        raise ValueError(f"{what}: contiguous tensors needed")


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 contiguous, weight (N, K) int8 contiguous, scales (N,) bf16 -> (M, N) fp32."""
    _check("int8_linear", x, weight, torch.int8, "int8 weight", scales)
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k or scales.shape[0] != n:
        raise ValueError(f"int8_linear: x {tuple(x.shape)}, weight {tuple(weight.shape)}, scales {tuple(scales.shape)}")
    y = torch.empty(m, n)
    library().int8_linear_f32(x.data_ptr(), m, k, weight.data_ptr(), n, scales.data_ptr(), None, y.data_ptr(),
                              torch.get_num_threads())
    return y


def int4_supported(out_features: int, in_features: int, group_size: int) -> bool:
    """The shapes the int4 kernel takes: whole 64-row blocks of PyTorch's CPU packing (whose layout
    model/quant/kernels.int4_rows_gatherable checks on the running PyTorch), groups of 32, 64 or 128 dividing K."""
    from model.quant.kernels import int4_rows_gatherable

    return (available() and bool(library().int4_linear_available()) and out_features % 64 == 0
            and group_size in (32, 64, 128)
            and in_features % group_size == 0 and int4_rows_gatherable("cpu"))


def int4_linear(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor,
                out_features: int) -> torch.Tensor:
    """x (M, K) fp32 contiguous, packed (N, K / 2) uint8 in PyTorch's CPU layout, scales_and_zeros (K / g, N, 2)
    bf16 -> (M, N) fp32."""
    _check("int4_linear", x, packed, torch.uint8, "uint8 packed codes", scales_and_zeros)
    m, k = x.shape
    if packed.shape != (out_features, k // 2) or scales_and_zeros.shape != (k // group_size, out_features, 2):
        raise ValueError(f"int4_linear: x {tuple(x.shape)}, packed {tuple(packed.shape)}, scales "
                         f"{tuple(scales_and_zeros.shape)}, {out_features} outputs, group {group_size}")
    y = torch.empty(m, out_features)
    if library().int4_linear_f32(x.data_ptr(), m, k, packed.data_ptr(), out_features, group_size,
                                 scales_and_zeros.data_ptr(), y.data_ptr(), torch.get_num_threads()):
        raise ValueError(f"int4_linear: shape {out_features}x{k}, group {group_size} not supported "
                         "(see int4_supported)")
    return y

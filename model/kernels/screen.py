"""The greedy screen's candidate tokens as one C call (csrc/screen.c); model/engine/greedy_screen.py owns the
bound and why it is exact."""
from __future__ import annotations

import ctypes
import functools

import torch

from model.kernels import build

_P, _L = ctypes.c_void_p, ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("screen")
    if lib is None:
        return None
    lib.greedy_screen.argtypes = [_P, _L, _L, _P, _L, _P, _P, _P, ctypes.c_double, _L, _P, _P]
    lib.greedy_screen.restype = _L
    return lib


def available() -> bool:
    return library() is not None


def candidates(x: torch.Tensor, approx: torch.Tensor, norms: torch.Tensor, errors: torch.Tensor,
               masses: torch.Tensor, norm_coefficient: float, out: torch.Tensor,
               marks: torch.Tensor) -> torch.Tensor | None:
    """x (M, K) fp32 and approx (M, N) fp32, contiguous; norms, errors, masses (N,) fp32; out (cap,) int64 and
    marks (N,) uint8 scratch (the caller's, reused). The sorted token ids that can be some row's argmax (a view
    of out), or None: more than cap of them, or a non-finite logit or bound."""
    m, k = x.shape
    n, cap = approx.shape[1], out.shape[0]
    count = library().greedy_screen(x.data_ptr(), m, k, approx.data_ptr(), n, norms.data_ptr(), errors.data_ptr(),
                                    masses.data_ptr(), norm_coefficient, cap, out.data_ptr(), marks.data_ptr())
    if count <= 0 or count > cap:
        return None
    return out[:count]

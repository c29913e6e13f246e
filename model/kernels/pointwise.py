"""The decode step's small per-row ops as single C calls (csrc/pointwise.c): RMSNorm, the residual add folded
into the norm after it, and GatedMLP's silu(gate) * up.

Why: at batch 1 the default model's step spent 2.7 ms in 61 norms, 1.7 ms in residual adds and 1.1 ms in
silu * up, almost all of it PyTorch's per-op overhead (~5-10 us an op; the work is ~100 ns). Here each is
one ctypes call into a loop over the rows.

The functions take fp32 or bf16 tensors (fp32 arithmetic, PyTorch's roundings reproduced for bf16) and
raise ValueError for what they do not handle; the modules below check cheaply and fall back to their
PyTorch parents' code. The runner swaps the modules in for serving only (`use_pointwise_kernels`): they
write the residual in place, so nothing with a gradient ever runs them.
"""
from __future__ import annotations

import ctypes
import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import build
from model.layers.mlp import GatedMLP
from model.layers.norm import RMSNorm
from model.quant.kernels import COMPUTE_DTYPE
from model.quant.modules import Int4Linear, Int8Linear

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_BF16 = torch.bfloat16
BF16_LINEARS = (Int4Linear, Int8Linear)  # the quantized linears: bf16 kernels behind fp32-in, fp32-out casts


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("pointwise")
    return None if lib is None else declare(lib)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The entry points' C signatures, declared once (ctypes then converts arguments without guessing)."""
    lib.norm_rows.argtypes = [_P, _P, _P, _P, _L, _L, _F, _I, _I]
    lib.norm_rows.restype = None
    lib.silu_mul.argtypes = [_P, _P, _L, _L, _I, _I]
    lib.silu_mul.restype = None
    lib.pointwise_simd.argtypes = []
    lib.pointwise_simd.restype = _I
    return lib


def available() -> bool:
    return library() is not None


def _fits(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.is_cpu and (t.dtype is torch.float32 or t.dtype is _BF16)


def _refuse(what: str, t: torch.Tensor) -> ValueError:
    return ValueError(f"{what}: a contiguous fp32 or bf16 CPU tensor is needed, got {t.dtype} on {t.device}"
                      f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the pointwise kernels are not available on this host")
    return lib


# csrc/pointwise.c's flag bits: which arguments are bf16, and whether bf16's intermediate roundings apply
X_BF16, RES_BF16, W_BF16, OUT_BF16, ROUND_MID = 1, 2, 4, 8, 16


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
          out_dtype: torch.dtype | None) -> torch.Tensor:
    lib = _lib()
    src = x if residual is None else residual
    for what, t in (("x", x), ("weight", weight), ("residual", src)):
        if not _fits(t):
            raise _refuse(what, t)
    n = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != n or src.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)}, residual {tuple(src.shape)} and weight {tuple(weight.shape)} "
                         "do not fit")
    if out_dtype is not None and out_dtype is not torch.float32 and out_dtype is not _BF16:
        raise ValueError(f"out_dtype {out_dtype}: fp32 or bf16")
    return _launch_norm(lib, x, residual, weight, eps, out_dtype)


def _launch_norm(lib: ctypes.CDLL, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """norm_rows on checked arguments. A 1-row call's cost is mostly this Python (~3 us: ctypes, the output's
    allocation), not the C (~0.1 us), so the modules check once and come straight here."""
    src = x if residual is None else residual
    out = torch.empty_like(src) if out_dtype is None else torch.empty_like(src, dtype=out_dtype)
    flags = ((X_BF16 if x.dtype is _BF16 else 0) | (W_BF16 if weight.dtype is _BF16 else 0)
             | (OUT_BF16 if out.dtype is _BF16 else 0) | (RES_BF16 | ROUND_MID if src.dtype is _BF16 else 0))
    n = x.shape[-1]
    lib.norm_rows(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(),
                  out.data_ptr(), x.numel() // n if n else 0, n, eps, flags, torch.get_num_threads())
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
             ) -> torch.Tensor:
    """RMSNorm over x's last dim: RMSNorm.forward's result (in out_dtype, default x's)."""
    return _norm(x, None, weight, eps, out_dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """residual += x IN PLACE (in residual's dtype: the sum `residual + x` makes), then RMSNorm of it
    (in out_dtype, default residual's)."""
    return _norm(x, residual, weight, eps, out_dtype)


def silu_mul(gate_up: torch.Tensor, out_dtype: torch.dtype | None = None, rounding: torch.dtype | None = None
             ) -> torch.Tensor:
    """(..., 2I) -> (..., I): silu(gate) * up, gate the first I columns. rounding: the dtype whose
    intermediate rounding to reproduce (default gate_up's; an fp32 model fed bf16 by a quantized linear
    computes in fp32)."""
    lib = _lib()
    if not _fits(gate_up):
        raise _refuse("gate_up", gate_up)
    width = gate_up.shape[-1]
    if width % 2:
        raise ValueError(f"gate_up rows of odd width {width}")
    inter, rows = width // 2, gate_up.numel() // width if width else 0
    out_dtype = out_dtype or gate_up.dtype
    if out_dtype is not torch.float32 and out_dtype is not _BF16:
        raise ValueError(f"out_dtype {out_dtype}: fp32 or bf16")
    out = torch.empty(rows, inter, dtype=out_dtype)  # torch.empty(ints) is the cheapest allocation call
    flags = ((X_BF16 if gate_up.dtype is _BF16 else 0) | (OUT_BF16 if out_dtype is _BF16 else 0)
             | (ROUND_MID if (rounding or gate_up.dtype) is _BF16 else 0))
    lib.silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, inter, flags, torch.get_num_threads())
    return out if gate_up.dim() == 2 else out.view(*gate_up.shape[:-1], inter)


class KernelRMSNorm(RMSNorm):
    """RMSNorm through the kernels when grad is off and the input fits; its parent's code otherwise.
    The weight is read from _parameters (nn.Module's __getattr__ costs ~1 us a call here); it is contiguous
    and on the CPU (the runner swaps these in for CPU models only), the inputs are checked each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._parameters["weight"]
        if (torch.is_grad_enabled() or x.dtype is not w.dtype or not x.is_contiguous() or not x.is_cpu
                or x.shape[-1] != w.shape[0]):
            return super().forward(x)
        return _launch_norm(library(), x, None, w, self.eps)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._parameters["weight"]
        # x may be bf16 over an fp32 residual (a quantized MLP's output, KernelGatedMLP._bf16_forward)
        if (torch.is_grad_enabled() or residual.dtype is not w.dtype or not residual.is_contiguous()
                or not residual.is_cpu or not _fits(x) or x.shape != residual.shape or x.shape[-1] != w.shape[0]):
            return super().add_norm(x, residual)
        return _launch_norm(library(), x, residual, w, self.eps), residual


class KernelGatedMLP(GatedMLP):
    """GatedMLP with silu(gate) * up as one kernel call, when grad is off and the projection's output fits."""

    bf16_linears = False  # use_pointwise_kernels sets it where both projections are bf16-computing int4/int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.bf16_linears and x.dtype is torch.float32 and not torch.is_grad_enabled()
                and _bf16_quantized(self.gate_up_proj) and _bf16_quantized(self.down_proj)):
            return self._bf16_forward(x)
        gate_up = self.gate_up_proj(x)
        if torch.is_grad_enabled() or not _fits(gate_up):
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(silu_mul(gate_up))

    def _bf16_forward(self, x: torch.Tensor) -> torch.Tensor:
        """An fp32 model's quantized MLP: the int4/int8 linears cast their input to bf16 and their output
        back to fp32 (4 casts an MLP); fed bf16 they cast nothing. So x is cast once, silu * up reads and
        writes bf16 (computing in fp32, as PyTorch's fp32 ops on the cast-back values do: the same numbers),
        and the bf16 output goes to the next residual add, which widens it exactly (add_rms_norm takes it).
        forward checks the projections each call: a LoRA-wrapped one (adapters add in fp32), or one the runner
        gave a C kernel with fp32 activations (Int8Linear.cpu_kernel), keeps the MLP on the fp32 path."""
        gate_up = self.gate_up_proj(x.to(_BF16))
        return self.down_proj(silu_mul(gate_up, out_dtype=_BF16, rounding=torch.float32))


def use_pointwise_kernels(model: nn.Module) -> int:
    """Serving only: every RMSNorm and GatedMLP of model becomes its kernel subclass (the same module,
    parameters and all: only its class changes). Returns how many were swapped, 0 without the kernels.
    In an fp32 model, a decoder layer's MLP over int4/int8 linears also passes bf16 between them (above),
    unless sandwich norms (GLM-4) take its output: they would norm it in bf16."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is RMSNorm:
            module.__class__ = KernelRMSNorm
            count += 1
        elif type(module) is GatedMLP:
            module.__class__ = KernelGatedMLP
            count += 1
    for layer in getattr(model, "layers", ()):
        mlp = getattr(layer, "mlp", None)
        if (type(mlp) is KernelGatedMLP and not getattr(layer, "sandwich", True) and _bf16_quantized(mlp.gate_up_proj)
                and _bf16_quantized(mlp.down_proj) and next(model.parameters()).dtype is torch.float32):
            mlp.bf16_linears = True
    return count


def _bf16_quantized(linear: nn.Module) -> bool:
    """An int4/int8 linear that computes in bf16 (not on a C kernel taking fp32 activations), without bias."""
    return (type(linear) in BF16_LINEARS and COMPUTE_DTYPE is _BF16 and linear.bias is None
            and not getattr(linear, "cpu_kernel", False))


def use_pytorch_paths(model: nn.Module) -> int:
    """The inverse of use_pointwise_kernels (the tests run one engine both ways)."""
    count = 0
    for module in model.modules():
        if type(module) is KernelRMSNorm:
            module.__class__ = RMSNorm
            count += 1
        elif type(module) is KernelGatedMLP:
            module.__dict__.pop("bf16_linears", None)
            module.__class__ = GatedMLP
            count += 1
    return count


Work = Callable[[], object]


def timing_candidates(model: nn.Module) -> dict[str, Callable[[int], Work]]:
    """For cpu_choices.pick: 'plain' (PyTorch) and 'kernel', each running the model's own decoder norms (each
    with its residual add) and its GatedMLPs' silu * up at the given rows, as a step runs them. Empty when the
    kernels are unavailable or the model has neither."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    norms = [m for m in model.modules() if type(m) is RMSNorm and m.weight.shape[0] == hidden]
    mlps = [m for m in model.modules() if type(m) is GatedMLP]
    if not available() or not (norms or mlps):
        return {}
    dtype = next(model.parameters()).dtype

    def inputs(rows: int):
        x = torch.randn(rows, hidden or 1).to(dtype) * 1e-3  # small: the kernel's residual grows by x each call
        gate_ups = [torch.randn(rows, 2 * m.intermediate_size).to(dtype) for m in mlps]
        return x, torch.randn(rows, hidden or 1).to(dtype), gate_ups

    def plain(rows: int) -> Work:
        x, residual, gate_ups = inputs(rows)

        @torch.inference_mode()
        def work() -> None:
            for norm in norms:
                RMSNorm.add_norm(norm, x, residual)
            for gate_up in gate_ups:
                gate, up = gate_up.chunk(2, dim=-1)
                F.silu(gate) * up
        return work

    def kernel(rows: int) -> Work:
        x, residual, gate_ups = inputs(rows)

        @torch.inference_mode()
        def work() -> None:
            for norm in norms:
                add_rms_norm(x, residual, norm.weight, norm.eps)
            for gate_up in gate_ups:
                silu_mul(gate_up)
        return work

    return {"plain": plain, "kernel": kernel}

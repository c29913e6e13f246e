"""A pure decode step's decoder layers as one C call (csrc/decode.c): the kernels the serving modules already
call one by one, composed in C in the order of model/models/decoder.py.

Why: once every op of a layer is a C kernel, what is left of a decode step is Python: module calls, wrappers,
output allocations, ~150 us a layer (4.5 of a 10.5 ms int4 step of the default model at one sequence, against
llama.cpp's ~8 ms a token over HTTP). Here a step is one call for all layers.

It only runs what the module path would run, so its results are that path's bit for bit (tested): it is built
when every layer is on kernels (each projection a KernelLinear, or an Int8Linear / Int4Linear whose start-up
choice was the C kernel; the pointwise kernels swapped in; the attention kernel supported), and a step uses
it only when the layers' attention would take the kernel path for that batch class (a KernelLinear's rows past
its kernel's limit are called back into the module). Anything else (MoE, multi-latent attention, q/k norms, a
projection that is only oneDNN-packed or PyTorch's, LoRA, quantized projections in a bf16 model) keeps the
modules. fp32 and bf16 models: the same kernels with the modules' dtype flags.
"""
from __future__ import annotations

import ctypes
import functools
import logging

import torch
from torch import nn

from model.kernels import attention as attention_kernels
from model.kernels import build, linear, pointwise, qlinear

log = logging.getLogger("glmserve.kernels")

_P, _L, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
LINEAR_F32, LINEAR_INT8, LINEAR_INT4, LINEAR_BF16 = 1, 2, 3, 4
# the pointwise kernels' flags the modules pass for an all-bf16 model (pointwise._norm / silu_mul): bf16 in, out
# and residual, PyTorch's intermediate roundings
BF16_NORM_FLAGS = pointwise.X_BF16 | pointwise.RES_BF16 | pointwise.W_BF16 | pointwise.OUT_BF16 | pointwise.ROUND_MID
BF16_SILU_FLAGS = pointwise.X_BF16 | pointwise.OUT_BF16 | pointwise.ROUND_MID


class _Linear(ctypes.Structure):  # GlmLinear
    _fields_ = [("kind", _L), ("fn", _P), ("w", _P), ("aux", _P), ("bias", _P), ("n", _L), ("k", _L),
                ("group", _L), ("max_rows", _L), ("id", _L)]


NO_ROW_LIMIT = 1 << 62  # a projection whose kernel takes any row count
# GlmDecoder.above: (projection id, x address, rows) -> the output's address, or None on error
_ABOVE = ctypes.CFUNCTYPE(_P, _L, _P, _L)
ABOVE_FAILED = -101  # glm_decoder_forward's code when the callback returned NULL


class _Block(ctypes.Structure):  # GlmBlock
    _fields_ = [("input_norm", _P), ("post_attn_norm", _P), ("post_self_attn_norm", _P), ("post_mlp_norm", _P),
                ("input_eps", _F), ("post_attn_eps", _F), ("post_self_attn_eps", _F), ("post_mlp_eps", _F),
                ("qkv", _Linear), ("o", _Linear), ("gate_up", _Linear), ("down", _Linear), ("attention", _P)]


class _Decoder(ctypes.Structure):  # GlmDecoder
    _fields_ = [("norm_rows", _P), ("silu_mul", _P), ("fused_attention", _P), ("blocks", ctypes.POINTER(_Block)),
                ("num_blocks", _L), ("hidden", _L), ("inter", _L), ("q_size", _L), ("qkv_size", _L),
                ("final_norm", _P), ("final_eps", _F), ("elem", ctypes.c_int32), ("norm_flags", ctypes.c_int32),
                ("silu_flags", ctypes.c_int32), ("above", _ABOVE)]


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("decode")
    if lib is None:
        return None
    lib.glm_decoder_forward.argtypes = [ctypes.POINTER(_Decoder), _P, _P, _L, _P, _P, ctypes.c_int]
    lib.glm_decoder_forward.restype = ctypes.c_int
    lib.glm_decoder_scratch.argtypes = [ctypes.POINTER(_Decoder)]
    lib.glm_decoder_scratch.restype = _L
    return lib


def _address(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


def _linear(module: nn.Module, dtype: torch.dtype, keep: list) -> _Linear | None:
    """The projection's kernel and arguments for activations of `dtype`, or None when it does not run on one
    of our C kernels."""
    from model.quant.modules import Int4Linear, Int8Linear

    if type(module) is linear.KernelLinear:
        w, b = module.weight, module.bias
        if module.kernel is None or w.dtype is not dtype or not w.is_contiguous():
            return None
        keep += [w, b]
        fn = linear.library().linear_f32 if dtype is torch.float32 else linear.library().linear_bf16
        return _Linear(LINEAR_F32 if dtype is torch.float32 else LINEAR_BF16, _address(fn), w.data_ptr(), None,
                       None if b is None else b.data_ptr(), module.out_features, module.in_features, 0,
                       module.max_rows, 0)
    bias = getattr(module, "bias", None)
    if dtype is not torch.float32 or (bias is not None and (bias.dtype is not torch.float32
                                                            or not bias.is_contiguous())):
        return None  # the quantized kernels take fp32 activations
    if type(module) is Int8Linear and module.cpu_kernel and module.weight.is_contiguous():
        keep += [module.weight, module.scales, bias]
        return _Linear(LINEAR_INT8, _address(qlinear.library().int8_linear_f32), module.weight.data_ptr(),
                       module.scales.data_ptr(), None if bias is None else bias.data_ptr(), module.out_features,
                       module.in_features, 0, NO_ROW_LIMIT, 0)
    if type(module) is Int4Linear and module.cpu_kernel and module.packed.is_contiguous():
        keep += [module.packed, module.scales_and_zeros, bias]
        return _Linear(LINEAR_INT4, _address(qlinear.library().int4_linear_f32), module.packed.data_ptr(),
                       module.scales_and_zeros.data_ptr(), None if bias is None else bias.data_ptr(),
                       module.out_features, module.in_features, module.group_size, NO_ROW_LIMIT, 0)
    return None


def _norm(module: nn.Module | None, dtype: torch.dtype, keep: list) -> tuple[int | None, float]:
    if module is None:
        return None, 0.0
    if type(module) is not pointwise.KernelRMSNorm or module.weight.dtype is not dtype:
        raise _NotFusable
    keep.append(module.weight)
    return module.weight.data_ptr(), module.eps


class _NotFusable(Exception):
    pass


class FusedDecoder:
    """Built once by the runner after its CPU choices (`build` returns None when the model is not all kernels);
    `forward` returns the final hidden states of a pure decode step, or None when this step must take the
    modules (its attention would not take the kernel path). The runner builds it after the KV cache and the
    RoPE tables are in place, and neither is replaced while it serves: the packed arguments point at them.

    A projection whose KernelLinear keeps fewer rows on its kernel than a step has (the start-up choice's
    kernel_rows: a oneDNN-packed copy or F.linear past them) is computed by calling back into that module from
    the C loop: the same path, so the same bits, as the modules, with the rest of the layer still in C (the
    module path's Python cost ~5 ms of a 32-row bf16 step of the default model)."""

    def __init__(self, model: nn.Module, decoder: _Decoder, blocks, keep: list, dtype: torch.dtype,
                 projections: list[nn.Module]) -> None:
        self.model, self.dtype = model, dtype
        self.decoder, self.blocks, self.keep = decoder, blocks, keep
        self.projections = projections  # by GlmLinear.id: the modules the callback runs
        self.first_attention = model.layers[0].attn  # its decode path for a batch decides whether a step fuses
        self.lib = library()
        self.scratch_per_row = self.lib.glm_decoder_scratch(ctypes.byref(decoder))
        # the step in flight: its scratch (the callback's inputs live there), the outputs the C loop still
        # reads, and an exception raised inside the callback (re-raised after the C call returns)
        self._scratch: torch.Tensor | None = None
        self._alive: list[torch.Tensor] = []
        self._error: BaseException | None = None
        self._callback = _ABOVE(self._above)  # held here: C keeps only the pointer
        decoder.above = self._callback

    @classmethod
    def build(cls, model: nn.Module) -> "FusedDecoder | None":
        from model.layers.attention import Attention

        if library() is None or not (attention_kernels.available() and pointwise.available()) or not model.layers:
            return None
        cfg = model.config
        dtype = model.norm.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return None
        keep: list = []
        callbacks: list[nn.Module] = []
        blocks = (_Block * len(model.layers))()
        try:
            for i, layer in enumerate(model.layers):
                attn, mlp = layer.attn, layer.mlp
                # supports_decode_kernel: this class (not MLA), no q/k norm, the standard RoPE, a CPU cache
                if (type(attn) is not Attention or not attn.supports_decode_kernel() or attn.kv_cache.dtype is not dtype
                        or type(mlp) is not pointwise.KernelGatedMLP or mlp.bf16_linears
                        or mlp.intermediate_size != cfg.intermediate_size):
                    return None
                projections = []
                for module in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                    arg = _linear(module, dtype, keep)
                    if arg is None:
                        return None
                    arg.id = len(callbacks)
                    callbacks.append(module)
                    projections.append(arg)
                dl = attn.kernel_layer()
                keep.append(dl)  # the struct the block points at lives as long as this decoder
                sandwich = (getattr(layer, "post_self_attn_norm", None), getattr(layer, "post_mlp_norm", None))
                norms = [_norm(n, dtype, keep) for n in (layer.input_norm, layer.post_attn_norm,
                                                         *(sandwich if layer.sandwich else (None, None)))]
                blocks[i] = _Block(*(p for p, _ in norms), *(e for _, e in norms), *projections,
                                   ctypes.addressof(dl.args))
            final = _norm(model.norm, dtype, keep)
        except _NotFusable:
            return None
        a = model.layers[0].attn
        pw, att = pointwise.library(), attention_kernels.library()
        decoder = _Decoder(_address(pw.norm_rows), _address(pw.silu_mul), _address(att.glm_fused_decode), blocks,
                           len(model.layers), cfg.hidden_size, cfg.intermediate_size,
                           a.q_size, a.q_size + 2 * a.kv_size, final[0], final[1],
                           4 if dtype is torch.float32 else 2, 0 if dtype is torch.float32 else BF16_NORM_FLAGS,
                           0 if dtype is torch.float32 else BF16_SILU_FLAGS)
        return cls(model, decoder, blocks, keep, dtype, callbacks)

    def _above(self, projection: int, x: int, rows: int) -> int | None:
        """The C loop's callback: the projection's module on its input, x an address in this step's scratch."""
        try:
            module = self.projections[projection]
            scratch = self._scratch
            at = (x - scratch.data_ptr()) // scratch.element_size()
            y = module(scratch[at:at + rows * module.in_features].view(rows, module.in_features))
            if y.dtype is not self.dtype or not y.is_contiguous():
                raise TypeError(f"fused decoder: projection {projection} gave {y.dtype}, contiguous "
                                f"{y.is_contiguous()}")
            self._alive.append(y)
            return y.data_ptr()
        except BaseException as e:  # noqa: BLE001 - C cannot unwind a Python exception: re-raised by forward
            self._error = e
            return None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor | None:
        """input_ids, positions (B,) of a pure decode step (one token per sequence) with its metadata."""
        b = input_ids.shape[0]
        if self.first_attention.decode_path(b) != "kernel":
            return None
        h = self.model.embed_tokens(input_ids)
        if h.dtype is not self.dtype or not h.is_contiguous():
            return None
        step = meta.decode_step(positions)
        out = torch.empty_like(h)
        self._scratch = scratch = torch.empty(b * self.scratch_per_row, dtype=self.dtype)
        try:
            rc = self.lib.glm_decoder_forward(ctypes.byref(self.decoder), ctypes.addressof(step.args), h.data_ptr(),
                                              b, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
        finally:
            self._scratch, error, self._error = None, self._error, None
            self._alive.clear()
        if error is not None:
            raise error
        if rc:
            raise IndexError(f"fused decoder: kernel error {rc}")
        return out

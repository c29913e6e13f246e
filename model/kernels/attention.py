"""Paged decode attention in C (model/kernels/csrc/attention.c): one query token per sequence; fp32 or bf16
tensors (all of a call's alike), fp32 math.

The PyTorch path it replaces (model/layers/attention.py) gathers every sequence's blocks into a dense
copy, masks the padding and calls SDPA, after ~20 small ops for RoPE and the cache write; here each
(sequence, kv head) reads its K/V rows straight from the blocks once for the whole GQA group, with an
online softmax, parallel over the pairs (OpenMP, torch's thread pool).

    layer = DecodeLayer(cache, heads, scale, cos, sin, rotary_dim, interleaved)   once per layer and cache
    step = DecodeStep(block_tables, context_lens, positions, slot_mapping)        once per step, all layers
    out = fused(layer, step, qkv)          RoPE + cache write + attention, from the qkv projection's output
    out = attend(layer, step, q)           q rotated and the new K/V cached already (a step with prefills)

A layer's and a step's arguments are checked and packed into C structs once, so a call checks only its own
input and passes four pointers: a call with two dozen ctypes arguments and their checks cost ~12 us, more
than the kernel's work at one short sequence. Misuse raises ValueError; an index out of range raises
IndexError (the C side checks every position, slot and block id it will touch before touching memory).
`decode_attention` and `fused_decode` do both steps in one call (tests, one-off use).
`available()` is False where the library cannot be built; callers keep the PyTorch path then.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from model.kernels import build

DTYPES = (torch.float32, torch.bfloat16)
_ERRORS = {-1: "a context length outside [1, max_blocks * block_size]", -2: "a block id outside the cache",
           -3: "a position outside the rotary tables", -4: "a cache slot outside the cache",
           -5: "out of memory for the kernel's scratch"}
_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32


class _Layer(ctypes.Structure):  # GlmLayer in attention.c
    _fields_ = [("cache", _p), ("cos", _p), ("sin", _p), ("num_blocks", _i64), ("block_size", _i64),
                ("heads", _i64), ("kv_heads", _i64), ("head_dim", _i64), ("num_positions", _i64),
                ("rotary_dim", _i64), ("scale", ctypes.c_float), ("interleaved", _i32), ("is_bf16", _i32)]


class _Step(ctypes.Structure):  # GlmStep in attention.c
    _fields_ = [("positions", _p), ("slot_mapping", _p), ("block_tables", _p), ("context_lens", _p),
                ("batch", _i64), ("max_blocks", _i64), ("lens_int32", _i32)]


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the entry points' signatures on a loaded library (the build's, or a test's own)."""
    layer, step = ctypes.POINTER(_Layer), ctypes.POINTER(_Step)
    lib.glm_decode_attention.argtypes = [layer, step, _p, _i64, _p, ctypes.c_int]
    lib.glm_decode_attention.restype = ctypes.c_int
    lib.glm_fused_decode.argtypes = [layer, step, _p, _p, ctypes.c_int]
    lib.glm_fused_decode.restype = ctypes.c_int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("attention")
    return bind(lib) if lib is not None else None


def available() -> bool:
    return library() is not None


def _int64_vector(t: torch.Tensor, b: int, what: str) -> None:
    if t.dtype != torch.int64 or not t.is_cpu or not t.is_contiguous() or t.shape != (b,):
        raise ValueError(f"decode attention kernel: {what} must be contiguous int64 CPU (B,)")


class DecodeLayer:
    """One layer's fixed arguments: its cache (2, num_blocks, block_size, kv_heads, head_dim), fp32 or bf16,
    and (for `fused`) its RoPE tables as RotaryEmbedding holds them (cos/sin (P, rotary_dim / 2), fp32).
    It keeps references to the tensors, so the pointers it passes stay valid."""

    def __init__(self, cache: torch.Tensor, heads: int, scale: float, cos: torch.Tensor | None = None,
                 sin: torch.Tensor | None = None, rotary_dim: int = 0, interleaved: bool = False,
                 lib: ctypes.CDLL | None = None) -> None:
        if cache.dtype not in DTYPES or not cache.is_cpu or not cache.is_contiguous() or cache.dim() != 5 \
                or cache.shape[0] != 2:
            raise ValueError("decode attention kernel: the cache must be a contiguous fp32/bf16 CPU tensor "
                             "(2, num_blocks, block_size, kv_heads, head_dim)")
        _, num_blocks, block_size, kv_heads, head_dim = cache.shape
        if heads % kv_heads:
            raise ValueError(f"decode attention kernel: {heads} query heads are not groups of {kv_heads} kv heads")
        if cos is not None:
            if cos.dtype != torch.float32 or sin.dtype != torch.float32 or not cos.is_cpu or not sin.is_cpu \
                    or not cos.is_contiguous() or not sin.is_contiguous() or cos.shape != sin.shape \
                    or cos.dim() != 2 or cos.shape[1] * 2 != rotary_dim or rotary_dim > head_dim:
                raise ValueError("decode attention kernel: cos/sin must be contiguous fp32 CPU (P, rotary_dim / 2)")
        self.lib = lib or library()
        self.tensors = (cache, cos, sin)
        self.dtype = cache.dtype
        self.heads, self.head_dim = heads, head_dim
        self.q_size, self.qkv_size = heads * head_dim, (heads + 2 * kv_heads) * head_dim
        self.args = _Layer(cache.data_ptr(), 0 if cos is None else cos.data_ptr(),
                           0 if sin is None else sin.data_ptr(), num_blocks, block_size, heads, kv_heads, head_dim,
                           0 if cos is None else cos.shape[0], rotary_dim, scale, int(interleaved),
                           int(cache.dtype == torch.bfloat16))

    def holds(self, cache: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> bool:
        """Whether this was built for these very tensors (a layer rebuilds it when its cache is replaced)."""
        return self.tensors[0] is cache and self.tensors[1] is cos and self.tensors[2] is sin


class DecodeStep:
    """One step's decode tables, shared by every layer: block_tables (B, max_blocks) int64, context_lens (B,)
    int32/int64 (tokens visible, the new one included), and for `fused` positions and slot_mapping (B,) int64."""

    def __init__(self, block_tables: torch.Tensor, context_lens: torch.Tensor,
                 positions: torch.Tensor | None = None, slot_mapping: torch.Tensor | None = None) -> None:
        if block_tables.dtype != torch.int64 or not block_tables.is_cpu or not block_tables.is_contiguous() \
                or block_tables.dim() != 2:
            raise ValueError("decode attention kernel: block_tables must be contiguous int64 CPU (B, max_blocks)")
        b = block_tables.shape[0]
        if context_lens.dtype not in (torch.int32, torch.int64) or not context_lens.is_cpu \
                or not context_lens.is_contiguous() or context_lens.shape != (b,):
            raise ValueError("decode attention kernel: context_lens must be contiguous int32/int64 CPU (B,)")
        if positions is not None:
            _int64_vector(positions, b, "positions")
            _int64_vector(slot_mapping, b, "slot_mapping")
        self.tensors = (block_tables, context_lens, positions, slot_mapping)
        self.positions = positions
        self.batch = b
        self.args = _Step(0 if positions is None else positions.data_ptr(),
                          0 if slot_mapping is None else slot_mapping.data_ptr(), block_tables.data_ptr(),
                          context_lens.data_ptr(), b, block_tables.shape[1], int(context_lens.dtype == torch.int32))


def _raise_for(rc: int) -> None:
    if rc:
        raise IndexError(f"decode attention kernel: {_ERRORS.get(rc, rc)}")


def fused(layer: DecodeLayer, step: DecodeStep, qkv: torch.Tensor) -> torch.Tensor:
    """A pure decode step of one layer from its qkv projection output (B, H*D + 2*KVH*D): RoPE on q and k as
    model/layers/rotary.py applies it, K/V written to cache slot slot_mapping[b], then attention over each
    context (new token included) -> (B, H*D), the layer's dtype."""
    if qkv.dtype != layer.dtype or not qkv.is_cpu or not qkv.is_contiguous() \
            or qkv.shape != (step.batch, layer.qkv_size):
        raise ValueError("decode attention kernel: qkv must be contiguous CPU (B, (H + 2 KVH) D) of the cache's dtype")
    if step.positions is None or layer.args.cos is None:
        raise ValueError("decode attention kernel: fused needs the step's positions and the layer's RoPE tables")
    out = torch.empty(step.batch, layer.q_size, dtype=layer.dtype)
    _raise_for(layer.lib.glm_fused_decode(layer.args, step.args, qkv.data_ptr(), out.data_ptr(),
                                          torch.get_num_threads()))
    return out


def attend(layer: DecodeLayer, step: DecodeStep, q: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, H, D; rows may be strided, heads dense) over each sequence's first context_lens[b]
    cached tokens -> (B, H, D). The new tokens' K/V must be cached already."""
    if q.dtype != layer.dtype or not q.is_cpu or q.dim() != 3 or q.shape[0] != step.batch \
            or q.shape[1] != layer.heads or q.shape[2] != layer.head_dim or q.stride(2) != 1 \
            or q.stride(1) != layer.head_dim:
        raise ValueError("decode attention kernel: q must be CPU (B, H, D) with dense heads, of the cache's dtype")
    out = torch.empty(q.shape, dtype=layer.dtype)
    _raise_for(layer.lib.glm_decode_attention(layer.args, step.args, q.data_ptr(), q.stride(0), out.data_ptr(),
                                              torch.get_num_threads()))
    return out


def decode_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     scale: float, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """`attend` in one call."""
    return attend(DecodeLayer(cache, q.shape[1], scale, lib=lib), DecodeStep(block_tables, context_lens), q)


def fused_decode(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
                 interleaved: bool, slot_mapping: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, heads: int, scale: float, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """`fused` in one call."""
    layer = DecodeLayer(cache, heads, scale, cos, sin, rotary_dim, interleaved, lib=lib)
    return fused(layer, DecodeStep(block_tables, context_lens, positions, slot_mapping), qkv)

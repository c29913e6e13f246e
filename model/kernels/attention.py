"""Paged decode attention in C (model/kernels/csrc/attention.c): one query token per sequence; fp32 or bf16
tensors (all of a call's alike), fp32 math.

    decode_attention(q, cache, block_tables, context_lens, scale, out)      q rotated, new K/V cached
    fused_decode(qkv, positions, cos, sin, rotary_dim, interleaved, slot_mapping, cache, block_tables,
                 context_lens, heads, scale, out)                            RoPE + cache write + attention

The PyTorch path it replaces (model/layers/attention.py) gathers every sequence's blocks into a dense
copy, masks the padding and calls SDPA, after ~20 small ops for RoPE and the cache write; here each
(sequence, kv head) reads its K/V rows straight from the blocks once for the whole GQA group, with an
online softmax, parallel over the pairs (OpenMP, torch's thread pool).

The wrappers check dtypes, devices, contiguity and shapes with attribute reads only (no torch op, so a
call costs a few microseconds), raise ValueError for a misuse and IndexError for an index out of range
(the C side checks every position, slot and block id it touches before it touches memory).
`available()` is False where the library cannot be built; callers keep the PyTorch path then.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from model.kernels import build

_p, _i64, _int, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_ERRORS = {-1: "a context length outside [1, max_blocks * block_size]", -2: "a block id outside the cache",
           -3: "a position outside the rotary tables", -4: "a cache slot outside the cache",
           -5: "out of memory for the kernel's scratch"}


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the entry points' signatures on a loaded library (the build's, or a test's own)."""
    lib.glm_decode_attention.argtypes = [_p, _i64, _p, _i64, _i64, _p, _i64, _p, _int, _i64, _i64, _i64, _i64,
                                         _f32, _p, _int, _int]
    lib.glm_decode_attention.restype = _int
    lib.glm_fused_decode.argtypes = [_p, _p, _p, _p, _i64, _i64, _int, _p, _p, _i64, _i64, _p, _i64, _p, _int,
                                     _i64, _i64, _i64, _i64, _f32, _p, _int, _int]
    lib.glm_fused_decode.restype = _int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = build.load("attention")
    return bind(lib) if lib is not None else None


def available() -> bool:
    return library() is not None


DTYPES = (torch.float32, torch.bfloat16)


def _check_cache(cache: torch.Tensor, heads: int) -> tuple[int, int, int, int]:
    """(num_blocks, block_size, kv_heads, head_dim) of one layer's (2, blocks, block_size, kv_heads, D) cache."""
    if cache.dtype not in DTYPES or not cache.is_cpu or not cache.is_contiguous() or cache.dim() != 5 \
            or cache.shape[0] != 2:
        raise ValueError("decode attention kernel: the cache must be a contiguous fp32/bf16 CPU tensor "
                         "(2, num_blocks, block_size, kv_heads, head_dim)")
    _, nb, bs, kvh, d = cache.shape
    if heads % kvh:
        raise ValueError(f"decode attention kernel: {heads} query heads are not groups of {kvh} kv heads")
    return nb, bs, kvh, d


def _check_tables(block_tables: torch.Tensor, context_lens: torch.Tensor, b: int) -> int:
    """1 when context_lens is int32, 0 for int64."""
    if block_tables.dtype != torch.int64 or not block_tables.is_cpu or not block_tables.is_contiguous() \
            or block_tables.dim() != 2 or block_tables.shape[0] != b:
        raise ValueError("decode attention kernel: block_tables must be contiguous int64 (B, max_blocks)")
    if context_lens.dtype not in (torch.int32, torch.int64) or not context_lens.is_cpu \
            or not context_lens.is_contiguous() or context_lens.shape != (b,):
        raise ValueError("decode attention kernel: context_lens must be contiguous int32/int64 (B,)")
    return int(context_lens.dtype == torch.int32)


def _raise_for(rc: int) -> None:
    if rc:
        raise IndexError(f"decode attention kernel: {_ERRORS.get(rc, rc)}")


def decode_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     scale: float, out: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """out (B, H, D) = attention of q (B, H, D; rows may be strided, heads dense) over each sequence's first
    context_lens[b] cached tokens, blocks block_tables[b]. The new tokens' K/V must already be cached.
    q, cache and out of one dtype (fp32 or bf16)."""
    lib = lib or library()
    b, h, d = q.shape
    nb, bs, kvh, cd = _check_cache(cache, h)
    dtype = cache.dtype
    if q.dtype != dtype or not q.is_cpu or q.stride(2) != 1 or q.stride(1) != d or cd != d:
        raise ValueError("decode attention kernel: q must be CPU (B, H, D) with dense heads, dtype and D the cache's")
    if out.dtype != dtype or not out.is_contiguous() or out.shape != q.shape:
        raise ValueError("decode attention kernel: out must be contiguous, shaped like q, of the cache's dtype")
    lens_int32 = _check_tables(block_tables, context_lens, b)
    _raise_for(lib.glm_decode_attention(
        q.data_ptr(), q.stride(0), cache.data_ptr(), nb, bs, block_tables.data_ptr(), block_tables.shape[1],
        context_lens.data_ptr(), lens_int32, b, h, kvh, d, scale, out.data_ptr(), int(dtype == torch.bfloat16),
        torch.get_num_threads()))
    return out


def fused_decode(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
                 interleaved: bool, slot_mapping: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, heads: int, scale: float, out: torch.Tensor,
                 lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """A pure decode step of one layer from its qkv projection output (B, H*D + 2*KVH*D): RoPE on q and k as
    model/layers/rotary.py applies it (cos/sin: RotaryEmbedding.cos_cache/sin_cache, (P, rotary_dim/2)), K/V
    written to cache slot slot_mapping[b], then out (B, H*D) = attention over the contexts (new token included).
    qkv, cache and out of one dtype (fp32 or bf16); the tables fp32."""
    lib = lib or library()
    nb, bs, kvh, d = _check_cache(cache, heads)
    b, dtype = qkv.shape[0], cache.dtype
    if qkv.dtype != dtype or not qkv.is_cpu or not qkv.is_contiguous() or qkv.shape != (b, (heads + 2 * kvh) * d):
        raise ValueError("decode attention kernel: qkv must be contiguous CPU (B, (H + 2 KVH) D) of the cache's dtype")
    if out.dtype != dtype or not out.is_contiguous() or out.shape != (b, heads * d):
        raise ValueError("decode attention kernel: out must be contiguous (B, H D) of the cache's dtype")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32 or not cos.is_contiguous() \
            or not sin.is_contiguous() or cos.shape != sin.shape or cos.shape[1] * 2 != rotary_dim \
            or rotary_dim > d or rotary_dim % 2:
        raise ValueError("decode attention kernel: cos/sin must be contiguous fp32 (P, rotary_dim / 2)")
    for t in (positions, slot_mapping):
        if t.dtype != torch.int64 or not t.is_cpu or not t.is_contiguous() or t.shape != (b,):
            raise ValueError("decode attention kernel: positions and slot_mapping must be contiguous int64 (B,)")
    lens_int32 = _check_tables(block_tables, context_lens, b)
    _raise_for(lib.glm_fused_decode(
        qkv.data_ptr(), positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos.shape[0], rotary_dim,
        int(interleaved), slot_mapping.data_ptr(), cache.data_ptr(), nb, bs, block_tables.data_ptr(),
        block_tables.shape[1], context_lens.data_ptr(), lens_int32, b, heads, kvh, d, scale, out.data_ptr(),
        int(dtype == torch.bfloat16), torch.get_num_threads()))
    return out

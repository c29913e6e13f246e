"""Attention over a paged KV cache (serving) or dense causal attention (training).

Serving flattens a step's tokens into one (T,) batch. Each layer writes the new K/V into the cache at
`slot_mapping`, then attends in at most two kinds of call:
  * prefill segments (one SDPA call each; chunks after the first read earlier K/V from the cache),
  * all decode tokens at once: one batched SDPA over block-gathered K/V with a length mask, or (decode path
    "kernel", chosen at start-up on CPU) the C kernel reading K/V straight from the blocks; in a pure decode
    step that kernel also does RoPE and the cache write, one call per layer (model/kernels/attention.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import attention as kernels
from model.layers.norm import RMSNorm
from model.layers.rotary import RotaryEmbedding


@dataclass
class PrefillSegment:
    start: int  # first row of this segment in the step's flattened tokens
    num_tokens: int  # query tokens computed in this step
    context_len: int  # tokens visible after this step: cached + new
    block_table: torch.Tensor  # (num_blocks,) int64, on the cache's device


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64: flat cache slot of each new token
    prefills: list[PrefillSegment] = field(default_factory=list)
    decode_start: int = 0  # decode tokens are rows [decode_start, T)
    decode_block_tables: torch.Tensor | None = None  # (B, max_blocks) int64, padded with 0
    decode_mask: torch.Tensor | None = None  # (B, 1, 1, max_blocks * block_size) bool; None for one sequence
    decode_context_len: int = 0  # the longest decode context (one sequence: its own, no mask needed)
    decode_context_lens: torch.Tensor | None = None  # (B,) int64: each decode's context, new token included
    kernel_step: kernels.DecodeStep | None = None  # the decode tables packed for the C kernel by the first layer

    def decode_step(self, positions: torch.Tensor | None = None) -> kernels.DecodeStep:
        """The decode tables packed for the C kernel, built once a step (by its first layer) and reused; with
        positions (a fused pure-decode step) the slot mapping too."""
        step = self.kernel_step
        if step is None or step.positions is not positions:
            step = self.kernel_step = kernels.DecodeStep(self.decode_block_tables, self.decode_context_lens, positions,
                                                         None if positions is None else self.slot_mapping)
        return step

    @property
    def num_decodes(self) -> int:
        return 0 if self.decode_block_tables is None else self.decode_block_tables.shape[0]


def pure_decode_metadata(tables: torch.Tensor, context: int, block_size: int) -> AttentionMetadata:
    """A pure decode step over `tables` (rows, blocks), every sequence at `context` tokens with the new one
    last: what start-up timings and benchmarks run (model/engine/cpu_choices.py, the runner's synthetic step,
    benchmarks/bench_decode_attention.py). Positions are decode_context_lens - 1."""
    rows, last = tables.shape[0], context - 1
    lens = torch.full((rows,), context, device=tables.device)
    meta = AttentionMetadata(slot_mapping=tables[:, last // block_size] * block_size + last % block_size,
                             decode_block_tables=tables, decode_context_len=context, decode_context_lens=lens)
    if rows > 1:
        width = torch.arange(tables.shape[1] * block_size, device=tables.device)
        meta.decode_mask = (width.unsqueeze(0) < lens.unsqueeze(1)).view(rows, 1, 1, -1)
    return meta


class Attention(nn.Module):
    """q/k/v in one fused projection, RoPE, GQA. `kv_cache` is set by the model runner:
    (2, num_blocks, block_size, num_kv_heads, head_dim).

    qk_norm_eps (Qwen3, GLM-4.5 use_qk_norm): an RMSNorm over each q and k head before RoPE."""

    # decode attention kernel per batch class (1: one sequence, 2: more), measured at start-up on CPU
    # (model/engine/cpu_choices.py): "sdpa", "grouped", (half-precision models) "sdpa_fp32" or (where
    # supports_decode_kernel()) "kernel"; unmeasured (and in subclasses such as MLA): PyTorch's SDPA
    decode_paths: dict[int, str] | None = None

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool,
                 rotary: nn.Module, qk_norm_eps: float | None = None, output_bias: bool = False) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.qkv_proj = nn.Linear(hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, hidden_size, bias=output_bias)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.rotary = rotary
        self.scale = head_dim ** -0.5
        self.kv_cache: torch.Tensor | None = None
        self._kernel_layer: kernels.DecodeLayer | None = None  # this layer's arguments packed for the C kernel

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata | None) -> torch.Tensor:
        return self.o_proj(self.attend(self.qkv_proj(x), positions, meta))

    def supports_decode_kernel(self) -> bool:
        """Whether the C decode kernel computes what this layer's PyTorch path does: an fp32 or bf16 CPU cache,
        this class (not MLA), no q/k norm, the standard RoPE module, and a library built on this host."""
        cache = self.kv_cache
        return (type(self) is Attention and self.q_norm is None and type(self.rotary) is RotaryEmbedding
                and cache is not None and cache.dtype in kernels.DTYPES and cache.is_cpu
                and cache.is_contiguous() and kernels.available())

    def decode_path(self, num_decodes: int) -> str:
        """The decode attention path this layer takes for a batch of num_decodes sequences."""
        return self.decode_paths[1 if num_decodes == 1 else 2] if self.decode_paths else "sdpa"

    def kernel_layer(self) -> kernels.DecodeLayer:
        """This layer's arguments packed for the C kernel (rebuilt when its cache or RoPE tables are replaced;
        also what model/kernels/decode.py points at)."""
        layer, r = self._kernel_layer, self.rotary
        if layer is None or not layer.holds(self.kv_cache, r.cos_cache, r.sin_cache):
            layer = self._kernel_layer = kernels.DecodeLayer(self.kv_cache, self.num_heads, self.scale, r.cos_cache,
                                                             r.sin_cache, r.rotary_dim, r.interleaved)
        return layer

    def _kernel_args(self, meta: AttentionMetadata, positions: torch.Tensor | None = None
                     ) -> tuple[kernels.DecodeLayer, kernels.DecodeStep]:
        return self.kernel_layer(), meta.decode_step(positions)

    def attend(self, qkv: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata | None) -> torch.Tensor:
        """From the qkv projection's output (..., T, q_size + 2 kv_size) to o_proj's input (..., T, q_size)."""
        if meta is not None and not meta.prefills and meta.num_decodes \
                and self.decode_path(meta.num_decodes) == "kernel":
            # a pure decode step: RoPE, the cache write and attention in one C call (~25 torch ops otherwise)
            return kernels.fused(*self._kernel_args(meta, positions), qkv)
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        v = qkv[..., self.q_size + self.kv_size:].unflatten(-1, (kvh, d))
        if self.q_norm is None and hasattr(self.rotary, "rotate"):
            # q and k heads are adjacent in the fused output: one RoPE pass over (..., T, H + KVH, D)
            qk = self.rotary.rotate(positions, qkv[..., :self.q_size + self.kv_size].unflatten(-1, (h + kvh, d)))
            q, k = qk.split([h, kvh], dim=-2)
        else:
            q = qkv[..., :self.q_size].unflatten(-1, (h, d))  # (..., T, H, D)
            k = qkv[..., self.q_size:self.q_size + self.kv_size].unflatten(-1, (kvh, d))
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        if meta is None:
            out = self._dense_causal(q, k, v)
        else:
            out = self._paged(q, k, v, meta)
        return out.flatten(-2)

    def _dense_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (B, T, H, D) -> (B, H, T, D)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, scale=self.scale, enable_gqa=True)
        return out.transpose(1, 2)

    def _paged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        cache = self.kv_cache
        k_cache, v_cache = cache[0], cache[1]  # (num_blocks, block_size, KVH, D)
        k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, v)
        if not meta.prefills and meta.num_decodes:  # a pure decode step: the decode output is the whole output
            return self._paged_decode(q, cache, meta)
        out = torch.empty_like(q)
        for seg in meta.prefills:
            rows = slice(seg.start, seg.start + seg.num_tokens)
            qs = q[rows].transpose(0, 1).unsqueeze(0)  # (1, H, Lq, D)
            if seg.context_len == seg.num_tokens:  # nothing cached: attend to the fresh K/V directly
                ks, vs = k[rows], v[rows]
                mask, causal = None, True
            else:
                ks, vs = gather_blocks(cache, seg.block_table)
                ks, vs = ks.flatten(0, 1)[: seg.context_len], vs.flatten(0, 1)[: seg.context_len]  # (L, KVH, D)
                offset = seg.context_len - seg.num_tokens
                q_pos = torch.arange(seg.num_tokens, device=q.device).unsqueeze(1) + offset
                mask = torch.arange(seg.context_len, device=q.device).unsqueeze(0) <= q_pos  # (Lq, L)
                causal = False
            o = F.scaled_dot_product_attention(qs, ks.transpose(0, 1).unsqueeze(0), vs.transpose(0, 1).unsqueeze(0),
                                               attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=True)
            out[rows] = o.squeeze(0).transpose(0, 1)
        if meta.num_decodes:
            out[meta.decode_start:] = self._paged_decode(q[meta.decode_start:], cache, meta)
        return out

    def _paged_decode(self, q: torch.Tensor, cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q: (B, H, D), one query per decoding sequence -> (B, H, D)."""
        bt = meta.decode_block_tables
        b = bt.shape[0]
        path = self.decode_path(b)
        if path == "kernel":  # q rotated and the new K/V cached already (a step with prefills too)
            return kernels.attend(*self._kernel_args(meta), q)
        kd, vd = gather_blocks(cache, bt.flatten())
        kd = kd.view(b, -1, self.num_kv_heads, self.head_dim)
        vd = vd.view(b, -1, self.num_kv_heads, self.head_dim)
        if meta.decode_mask is None:  # one sequence: its exact context, no mask
            kd, vd = kd[:, :meta.decode_context_len], vd[:, :meta.decode_context_len]
        kd, vd = kd.transpose(1, 2), vd.transpose(1, 2)  # (B, KVH, L, D)
        qd = q.unsqueeze(2)  # (B, H, 1, D)
        if path == "grouped":
            o = grouped_decode(qd, kd, vd, meta.decode_mask, self.scale)
        elif path == "sdpa_fp32":
            o = fp32_sdpa_decode(qd, kd, vd, meta.decode_mask, self.scale)
        else:
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=self.scale,
                                               enable_gqa=True)
        return o.squeeze(2)

    def _grouped_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
        return grouped_decode(q, k, v, mask, self.scale)


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of `blocks` from a layer's cache (2, num_blocks, block_size, KVH, D), each (n, block_size,
    KVH, D). Two index_selects along each half's leading dim: those copy whole blocks, where one
    index_select along dim 1 of the pair ran an element-wise loop, 9x slower (930 vs 100 us for 32
    sequences x 128 tokens of the default model, and most of a 32-stream decode step's attention)."""
    return cache[0].index_select(0, blocks), cache[1].index_select(0, blocks)


def fp32_sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """A bf16/fp16 model's decode attention through SDPA's fp32 kernel on upcast copies, cast back: on this
    CPU its bf16 kernel was 2-3x slower for one sequence (model/engine/cpu_choices.py measures it)."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale,
                                          enable_gqa=True).to(q.dtype)


def grouped_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
    """One query per sequence as two batched matmuls, the query heads of a KV head stacked as rows:
    q (B, H, 1, D), k/v (B, KVH, L, D), mask (B, 1, 1, L) or None -> (B, H, 1, D). SDPA's CPU flash
    kernel was measured at 2.1 ms per layer in bf16 at 32 sequences x 176 tokens, this at 0.25 ms; in fp32
    SDPA won. Which one runs is measured at start-up (model/engine/cpu_choices.py)."""
    b, h, _, d = q.shape
    kvh = k.shape[1]
    scores = torch.matmul(q.view(b, kvh, h // kvh, d), k.transpose(-1, -2)) * scale  # (B, KVH, G, L)
    scores = scores.float()
    if mask is not None:
        scores = scores.masked_fill(~mask.view(b, 1, 1, -1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, h, 1, d)

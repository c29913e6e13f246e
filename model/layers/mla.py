"""Multi-latent attention (GLM-4.7-Flash `glm4_moe_lite`; DeepSeek-V2/3's layout), served the simple way:
K and V are expanded per head from the latent and cached like any multi-head attention's, so the paged
cache, prefill and decode paths are `Attention`'s own. (Caching the latent instead would take ~17x less
KV memory for GLM-4.7-Flash; not implemented.)

Each head's q/k is [nope | rope] in the checkpoint; we keep it as [rope | nope] so the shared RoPE rotates
the first qk_rope_head_dim dims. The same permutation of q and k leaves every q·k, and so the output, as is.
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import MlaConfig
from model.layers.attention import Attention, AttentionMetadata
from model.layers.norm import RMSNorm

_LATENT_NORM_EPS = 1e-6  # the reference builds q_a_layernorm and kv_a_layernorm with the default eps


class LatentAttention(Attention):
    def __init__(self, hidden_size: int, num_heads: int, mla: MlaConfig, bias: bool, rotary: nn.Module) -> None:
        nn.Module.__init__(self)
        self.mla = mla
        self.head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        self.num_heads = self.num_kv_heads = num_heads
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, mla.q_lora_rank, bias=bias)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, _LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, num_heads * self.head_dim, bias=False)
        self.kv_a_proj = nn.Linear(hidden_size, mla.kv_lora_rank + mla.qk_rope_head_dim, bias=bias)
        self.kv_a_norm = RMSNorm(mla.kv_lora_rank, _LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, num_heads * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False)
        self.o_proj = nn.Linear(num_heads * mla.v_head_dim, hidden_size, bias=bias)
        self.rotary = rotary
        self.scale = self.head_dim ** -0.5
        self.kv_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata | None) -> torch.Tensor:
        a = self.mla
        q = self.q_proj(x) if a.q_lora_rank is None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q_nope, q_rope = q.unflatten(-1, (self.num_heads, self.head_dim)).split(
            [a.qk_nope_head_dim, a.qk_rope_head_dim], dim=-1)  # (..., T, H, nope), (..., T, H, rope)
        latent, k_rope = self.kv_a_proj(x).split([a.kv_lora_rank, a.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_norm(latent)).unflatten(-1, (self.num_heads, -1))
        k_nope, v = kv.split([a.qk_nope_head_dim, a.v_head_dim], dim=-1)  # (..., T, H, nope), (..., T, H, v)
        k_rope = k_rope.unsqueeze(-2).expand(*k_nope.shape[:-1], a.qk_rope_head_dim)  # one rotary key for all heads
        q, k = self.rotary(positions, torch.cat([q_rope, q_nope], dim=-1), torch.cat([k_rope, k_nope], dim=-1))
        v = v.contiguous()
        out = self._dense_causal(q, k, v) if meta is None else self._paged(q, k, v, meta)
        return self.o_proj(out.flatten(-2))

"""The one GLM/Llama-family decoder: pre-norm blocks of RoPE attention (GQA, optional QKV bias,
full or partial rotary, optional per-head q/k norms) and a gated SiLU MLP or a sparse MoE of them
(Qwen3-MoE, GLM-4.5), with GLM-4's optional sandwich norms; GLM-4.7-Flash's multi-latent attention in
place of the attention.

Serving calls it with flattened tokens (T,) and an AttentionMetadata; training with (B, T) and no
metadata (dense causal attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import ModelConfig
from model.layers.attention import Attention, AttentionMetadata
from model.layers.mla import LatentAttention
from model.layers.mlp import GatedMLP
from model.layers.moe import SparseMoE
from model.layers.norm import RMSNorm
from model.layers.rotary import RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, layer_idx: int = 0) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.mla is not None:
            self.attn: Attention = LatentAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.mla,
                                                   cfg.attention_bias, rotary)
        else:
            self.attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                  cfg.attention_bias, rotary, qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None,
                                  output_bias=cfg.attention_output_bias)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer_idx):
            self.mlp: nn.Module = SparseMoE(cfg.hidden_size, cfg.moe)
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.sandwich = cfg.post_sublayer_norms
        if self.sandwich:
            self.post_self_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                meta: AttentionMetadata | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h: the previous layer's MLP output, not yet added to residual, the running sum of the block
        outputs (None at the first layer: h is the embedding). Returns this layer's (MLP output, residual).

        The sum is the plain pre-norm block's (out = h + attn(norm(h)); out + mlp(norm(out))), but each
        residual add happens in the norm that follows it (RMSNorm.add_norm), so a fused kernel can do
        both in one pass; the last layer's add is the final norm's (CausalLM.forward)."""
        if residual is None:
            residual = h
            x = self.input_norm(h)
        else:
            x, residual = self.input_norm.add_norm(h, residual)
        a = self.attn(x, positions, meta)
        if self.sandwich:
            a = self.post_self_attn_norm(a)
        x, residual = self.post_attn_norm.add_norm(a, residual)
        m = self.mlp(x)
        if self.sandwich:
            m = self.post_mlp_norm(m)
        return m, residual


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.rotary, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False

    def reset_rotary(self, device: torch.device | str) -> None:
        """Rebuild the RoPE tables (needed after building on the meta device)."""
        rotary = RotaryEmbedding(self.config.rope, self.config.head_dim, self.config.max_position_embeddings)
        self.rotary.cos_cache = rotary.cos_cache.to(device)
        self.rotary.sin_cache = rotary.sin_cache.to(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                meta: AttentionMetadata | None = None) -> torch.Tensor:
        """Returns final hidden states, shaped like input_ids plus a hidden dim."""
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        h = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h, residual = checkpoint(layer, h, residual, positions, meta, use_reentrant=False)
            else:
                h, residual = layer(h, residual, positions, meta)
        if residual is None:  # no layers
            return self.norm(h)
        return self.norm.add_norm(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; labels are aligned with input_ids, -100 = ignored."""
        logits = self.compute_logits(self(input_ids))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

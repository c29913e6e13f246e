"""Rotary position embeddings: full or partial, half-split (Llama) or interleaved (GLM), with
linear and llama3 frequency scaling."""
from __future__ import annotations

import math

import torch
from torch import nn

from model.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, rotary_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    if rope.scaling_type == "linear":
        inv_freq = inv_freq / rope.scaling_factor
    elif rope.scaling_type == "llama3":
        inv_freq = _llama3_scale(inv_freq, rope)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.scaling_factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.scaling_factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to q and k of shape (..., T, heads, head_dim) given positions of shape (..., T)."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.rotary_dim = round(head_dim * rope.partial_rotary_factor)  # a fraction like 64/192 is inexact
        self.head_dim = head_dim
        self.interleaved = rope.interleaved
        inv_freq = inverse_frequencies(rope, self.rotary_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (P, rotary_dim/2)
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)
        self._last_positions: torch.Tensor | None = None
        self._last_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_full: tuple[torch.Tensor, torch.Tensor] | None = None  # half-split: (cos, cos), (-sin, sin)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._tables(positions)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def rotate(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """RoPE on one tensor of heads (..., T, heads, head_dim): q and k heads side by side rotate in one
        pass (half the small ops of forward), since each head is rotated alike."""
        cos, sin = self._tables(positions)
        return self._rotate(x, cos, sin)

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # every layer of one forward passes the same positions tensor: look the tables up once
        if positions is not self._last_positions:
            self._last_positions = positions
            cos, sin = self.cos_cache[positions].unsqueeze(-2), self.sin_cache[positions].unsqueeze(-2)
            self._last_cos_sin = (cos, sin)  # (..., T, 1, rotary_dim/2)
            self._last_full = None if self.interleaved else (torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1))
        return self._last_cos_sin

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.rotary_dim
        x_rot = x[..., :r].float()
        if self.interleaved:
            x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
            rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            # (x1 cos - x2 sin, x2 cos + x1 sin) as x * (cos, cos) + (x2, x1) * (-sin, sin): four ops instead
            # of nine, the same products and sums (a + (-b) is a - b exactly), so the same bits
            cos_full, sin_signed = self._last_full
            rotated = x_rot * cos_full + x_rot.roll(r // 2, dims=-1) * sin_signed
        rotated = rotated.to(x.dtype)
        if r == self.head_dim:
            return rotated
        return torch.cat((rotated, x[..., r:]), dim=-1)

"""The decode step's fused small ops compute what the reference formulas compute: RMSNorm through
F.rms_norm, and RoPE on q and k heads side by side in one pass."""
from __future__ import annotations

import pytest
import torch

from model.config import RopeConfig
from model.layers.norm import RMSNorm
from model.layers.rotary import RotaryEmbedding


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rms_norm_equals_the_reference_formula(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(64).to(dtype)
    x = (torch.randn(3, 7, 64) * 4).to(dtype)
    x32 = x.float()
    reference = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)  # HF's order
    got = norm(x)
    assert got.dtype == reference.dtype
    torch.testing.assert_close(got.float(), reference.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("interleaved,partial", [(False, 1.0), (True, 0.5)])
def test_joint_rotation_of_q_and_k_heads_equals_rotating_each(interleaved: bool, partial: float) -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(RopeConfig(theta=10000.0, interleaved=interleaved, partial_rotary_factor=partial), 16, 64)
    positions = torch.tensor([0, 5, 9, 33])
    q, k = torch.randn(4, 6, 16), torch.randn(4, 2, 16)
    q_ref, k_ref = rope(positions, q, k)
    qk = rope.rotate(positions, torch.cat([q, k], dim=1))
    assert torch.equal(qk[:, :6], q_ref) and torch.equal(qk[:, 6:], k_ref)


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_half_split_rotation_has_the_bits_of_the_reference_formula(partial: float) -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(RopeConfig(theta=10000.0, partial_rotary_factor=partial), 16, 64)
    positions = torch.tensor([0, 5, 9, 33])
    x = torch.randn(4, 3, 16)
    r = rope.rotary_dim
    cos, sin = rope.cos_cache[positions].unsqueeze(-2), rope.sin_cache[positions].unsqueeze(-2)
    x1, x2 = x[..., : r // 2], x[..., r // 2:r]
    reference = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., r:]), dim=-1)
    assert torch.equal(rope.rotate(positions, x), reference)

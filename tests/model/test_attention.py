"""The CPU decode path for bf16 (two grouped matmuls) computes what SDPA computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.layers.attention import Attention


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_grouped_decode_equals_sdpa(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    b, h, kvh, length, d = 6, 9, 3, 40, 64
    attn = Attention(h * d, h, kvh, d, bias=False, rotary=torch.nn.Identity())
    q = torch.randn(b, h, 1, d)
    k, v = torch.randn(b, kvh, length, d), torch.randn(b, kvh, length, d)
    lens = torch.tensor([1, 5, 17, 33, 39, 40])  # ragged contexts, the first with a single token
    mask = (torch.arange(length)[None] < lens[:, None]).view(b, 1, 1, length)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale, enable_gqa=True)
    # the engine passes K/V as a strided view of the gathered cache: (B, L, KVH, D) transposed
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2).to(dtype)
    v_view = v.transpose(1, 2).contiguous().transpose(1, 2).to(dtype)
    got = attn._grouped_decode(q.to(dtype), k_view, v_view, mask)
    assert got.dtype == dtype and got.shape == reference.shape
    torch.testing.assert_close(got.float(), reference, rtol=tol, atol=tol)

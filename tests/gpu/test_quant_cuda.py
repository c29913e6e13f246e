"""CUDA checks of the quantized modules (model/quant); skipped without a GPU.

    python -m pytest -q -o addopts="" -m gpu tests/gpu/test_quant_cuda.py
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.quant import QuantSpec
from model.quant.quantize import quantize_int4, quantize_int8, quantize_linear

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("method,shape", [("int8", (960, 576)), ("int4", (960, 576)), ("int4", (1536, 512)),
                                          ("int4", (576, 1536))])
def test_cuda_quantized_linear_equals_its_dequantized_matmul(method, shape) -> None:
    n, k = shape
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=False).cuda()
    module = quantize_linear(lin, QuantSpec(method))
    w = lin.weight.detach()
    if method == "int4":
        q, scale, zero = quantize_int4(w, module.group_size)
        g = module.group_size
        deq = (q.float() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)
    else:
        q, scales = quantize_int8(w)
        deq = q.float() * scales.float().unsqueeze(1)
    x = torch.randn(7, k, device="cuda")
    ref = x.bfloat16().float() @ deq.T
    assert (module(x) - ref).abs().max() <= 2 ** -6 * ref.abs().max() + 1e-3

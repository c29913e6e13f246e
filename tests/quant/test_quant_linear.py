"""Quantized modules against the fp32 matmul of their own dequantized weights.

Tolerance: the kernels take bf16 activations and return bf16, so a result may differ from the fp32
reference (bf16-rounded input @ dequantized W^T, fp32 accumulation) by bf16 output rounding plus accumulation
order: |y - ref| <= 2^-7 * max|ref| + 1e-3, stated per test below. Shape classes: square, wide (N > K),
tall (K > N), vocabulary-sized N, a bias, 1 and 37 rows.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.quant import QuantSpec, quantize_model, weight_bytes
from model.quant.quantize import quantize_embedding, quantize_int4, quantize_int8, quantize_linear

SHAPES = {"square": (576, 576), "wide": (1536, 576), "tall": (576, 1536), "vocab": (8192, 576)}


def _dequantized(lin: nn.Linear, module: nn.Module) -> torch.Tensor:
    w = lin.weight.detach()
    if hasattr(module, "group_size"):
        q, scale, zero = quantize_int4(w, module.group_size)
        g = module.group_size
        return (q.float() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)
    q, scales = quantize_int8(w)
    return q.float() * scales.float().unsqueeze(1)


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    bound = 2 ** -7 * ref.abs().max().item() + 1e-3
    err = (y - ref).abs().max().item()
    assert err <= bound, f"max error {err} > {bound}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method,group", [("int8", 32), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("rows", [1, 37])
def test_quantized_linear_equals_fp32_linear_of_its_dequantized_weight(shape, method, group, rows) -> None:
    n, k = SHAPES[shape]
    torch.manual_seed(n + k + rows)
    lin = nn.Linear(k, n, bias=shape == "square")
    module = quantize_linear(lin, QuantSpec(method, group))
    if method == "int4":
        assert module.group_size == (group if k % group == 0 else 64)  # 576 inputs: 128 -> 64
    x = torch.randn(rows, k)
    ref = x.bfloat16().float() @ _dequantized(lin, module).T
    if lin.bias is not None:
        ref = ref + lin.bias.detach()
    y = module(x)
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    _close(y, ref)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantization_error_is_small_against_the_float_weight(method) -> None:
    # not a kernel check: the codes themselves are close to the original weights (one quantization step)
    torch.manual_seed(1)
    lin = nn.Linear(576, 960)
    module = quantize_linear(lin, QuantSpec(method))
    x = torch.randn(8, 576)
    rel = (module(x) - lin(x)).norm() / lin(x).norm()
    assert rel < (0.02 if method == "int8" else 0.15)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_embedding_rows_equal_the_dequantized_table(method) -> None:
    torch.manual_seed(2)
    emb = nn.Embedding(1024, 128)
    module = quantize_embedding(emb, QuantSpec(method))
    ids = torch.tensor([[0, 31, 32, 63, 64, 1023], [5, 5, 700, 96, 97, 1]])
    lin = nn.Linear(128, 1024, bias=False)
    lin.weight.data = emb.weight.data
    table = _dequantized(lin, module)
    assert torch.allclose(module(ids), table[ids], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_tied_embedding_and_lm_head_share_one_quantized_table(tiny_llama_dir: str, method) -> None:
    from model import load_model

    model = load_model(tiny_llama_dir).model
    float_bytes = weight_bytes(model)
    quantize_model(model, QuantSpec(method))
    buffers = {n: b.data_ptr() for n, b in model.named_buffers(remove_duplicate=False)}
    table = "packed" if method == "int4" else "weight"
    assert buffers[f"embed_tokens.{table}"] == buffers[f"lm_head.{table}"]
    assert weight_bytes(model) < float_bytes * (0.3 if method == "int8" else 0.2)
    logits = model.compute_logits(model(torch.tensor([[3, 4, 5]])))  # (1, 3, vocab)
    assert torch.isfinite(logits).all()

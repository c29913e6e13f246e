"""GGUF Q4_0 / Q4_1 / Q8_0 blocks converted to our kernels' codes, checked against the `gguf` package's own
dequantization (gguf.quants.dequantize).

Stated exactness: the int4 codes are the file's nibbles, and (q - 8) * scale + zero in fp32 equals ggml's value
to fp32 rounding (Q4_0 exactly; Q4_1 within 1e-6 relative: zero = m + 8 d is one fp32 add). Served, the kernel
keeps scale and zero in bf16 (<= 2^-9 relative each). Q8_0 is re-scaled to one scale per row: within half
of that row's step.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GT

from model.quant.gguf_blocks import q4_codes, q8_codes, q8_to_int8_rows
from model.quant.quantize import int4_linear


def _weights(n: int = 96, k: int = 192, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[3] += 0.5  # a row with an offset: Q4_1's min matters
    return w


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_q4_codes_reproduce_gguf_dequantization(kind: str) -> None:
    raw = gguf.quants.quantize(_weights(), GT[kind])
    ref = torch.from_numpy(gguf.quants.dequantize(raw, GT[kind]).copy())
    q, scale, zero = q4_codes(raw, kind)
    assert q.min() >= 0 and q.max() <= 15 and q.shape == ref.shape
    ours = (q.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    if kind == "Q4_0":
        assert torch.equal(ours, ref)
    else:
        assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_int4_linear_from_stored_blocks_matches_the_dequantized_matmul(kind: str) -> None:
    raw = gguf.quants.quantize(_weights(seed=1), GT[kind])
    ref_w = torch.from_numpy(gguf.quants.dequantize(raw, GT[kind]).copy())
    linear = int4_linear(*q4_codes(raw, kind), 32, torch.device("cpu"))
    x = torch.randn(5, ref_w.shape[1])
    ref = x.bfloat16().float() @ ref_w.T
    # bf16 scale/zero (2^-9 relative each, times |q - 8| <= 8 per weight) and bf16 output rounding
    assert (linear(x) - ref).abs().max() <= 2 ** -5 * ref.abs().max()


def test_q8_codes_are_exact_and_per_row_int8_is_within_half_a_step() -> None:
    raw = gguf.quants.quantize(_weights(seed=2), GT.Q8_0)
    ref = torch.from_numpy(gguf.quants.dequantize(raw, GT.Q8_0).copy())
    codes, d = q8_codes(raw)
    assert torch.equal(codes.float() * d.repeat_interleave(32, 1), ref)
    q, scales = q8_to_int8_rows(codes, d)
    err = (q.float() * scales.float().unsqueeze(1) - ref).abs()
    assert (err <= 0.5 * scales.float().unsqueeze(1) + 1e-9).all()


def test_default_model_served_as_stored_keeps_its_q4_1_codes() -> None:
    """The default model's Q4_1 layers load as int4 with the file's codes; its Q8_0 embedding as int8."""
    from model import EngineConfig, load_model
    from model.loader import default_model_gguf
    from model.quant import Int4Linear, Int8Embedding, Int8Linear

    loaded = load_model("default", engine_config=EngineConfig(quantization="auto"))
    model = loaded.model
    assert isinstance(model.embed_tokens, Int8Embedding) and isinstance(model.lm_head, Int8Linear)
    down = model.layers[0].mlp.down_proj
    assert isinstance(down, Int4Linear) and down.group_size == 32
    reader = gguf.GGUFReader(str(default_model_gguf()))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert t.tensor_type.name == "Q4_1"
    ref_w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
    x = torch.randn(3, ref_w.shape[1])
    ref = x.bfloat16().float() @ ref_w.T
    assert (down(x) - ref).abs().max() <= 2 ** -5 * ref.abs().max()


def test_float_tied_embedding_stays_tied_when_the_rest_is_built_from_blocks() -> None:
    # --quantization int4 on a GGUF whose embedding is Q8_0: the embedding loads float, its lm_head must
    # keep reading the same tensor (the runner then quantizes the pair once)
    from model.config import preset_config
    from model.models.decoder import CausalLM
    from model.quant.gguf_load import _materialize

    cfg = preset_config("glm-tiny", vocab_size=256, tie_word_embeddings=True)
    with torch.device("meta"):
        model = CausalLM(cfg)
    _materialize(model, torch.float32, torch.device("cpu"))
    assert model.lm_head.weight is model.embed_tokens.weight and not model.lm_head.weight.is_meta

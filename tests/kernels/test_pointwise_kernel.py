"""The pointwise C kernels (model/kernels/pointwise.py) against the PyTorch code they replace, computed on
this machine: RMSNorm, the residual add folded into it (in place), silu(gate) * up; fp32 and bf16, the
mixed dtypes of a quantized MLP, the scalar (non-AVX-512) build; the modules' fallbacks; and the engine's
greedy output with the kernels swapped in against the same engine on PyTorch's paths."""
from __future__ import annotations

import ctypes
import json
import platform
import random
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.kernels import build

pytestmark = [
    pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH: the kernels cannot be built"),
    pytest.mark.skipif(not build.enabled(), reason="GLMSERVE_KERNELS=0 turns the kernels off"),
]

ROWS = [1, 2, 7, 32, 100]
WIDTHS = [16, 17, 576, 960, 4096]
BF16_TOL = dict(rtol=2 ** -7, atol=1e-2)  # one bf16 ulp: the kernel's sum of squares runs in another order


@pytest.fixture(scope="module")
def pw():
    from model.kernels import pointwise

    assert pointwise.library() is not None, "a compiler exists but csrc/pointwise.c did not build or load"
    return pointwise


@pytest.fixture(scope="module")
def scalar_lib(tmp_path_factory):
    """csrc/pointwise.c built without AVX-512: the portable fallback loops."""
    from model.kernels import pointwise

    out = tmp_path_factory.mktemp("scalar") / "pointwise_scalar.so"
    cflags = [f for f in build.CFLAGS if f != "-march=native"]
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        cflags.append("-mno-avx512f")  # even where the compiler targets AVX-512 by default
    subprocess.run([build.compiler(), *cflags, str(build.CSRC / "pointwise.c"), "-o", str(out), "-lm"], check=True)
    lib = pointwise.declare(ctypes.CDLL(str(out)))
    assert lib.pointwise_simd() == 0
    return lib


def _norm(width: int, eps: float, dtype: torch.dtype = torch.float32):
    from model.layers.norm import RMSNorm

    norm = RMSNorm(width, eps)
    norm.weight.data = torch.randn(width) * 0.5 + 1
    return norm.to(dtype).requires_grad_(False)


def _plain_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rows", ROWS)
def test_norms_match_torch_fp32(pw, rows: int, width: int, eps: float) -> None:
    torch.manual_seed(rows * 7919 + width)
    norm = _norm(width, eps)
    x, residual = torch.randn(rows, width) * 3, torch.randn(rows, width)
    torch.testing.assert_close(pw.rms_norm(x, norm.weight, eps), norm(x), rtol=1e-5, atol=1e-5)
    expected_sum = residual + x
    expected = norm(expected_sum)
    kept_x, ptr = x.clone(), residual.data_ptr()
    got = pw.add_rms_norm(x, residual, norm.weight, eps)
    torch.testing.assert_close(residual, expected_sum, rtol=1e-6, atol=1e-6)  # updated in place
    assert residual.data_ptr() == ptr
    torch.testing.assert_close(x, kept_x, rtol=0, atol=0)  # x only read
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul_matches_torch_fp32(pw, rows: int, width: int) -> None:
    torch.manual_seed(rows * 31 + width)
    gate_up = torch.randn(rows, 2 * width) * 4
    got = pw.silu_mul(gate_up)
    assert got.shape == (rows, width)
    torch.testing.assert_close(got, _plain_silu_mul(gate_up), rtol=1e-5, atol=1e-6)


def test_silu_mul_at_extreme_gates(pw) -> None:
    # exp's range reduction: saturating gates (silu -> 0 and -> x), the underflow/overflow ends of exp
    gate = torch.tensor([-1e4, -200.0, -104.0, -88.5, -87.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 87.0, 88.5, 200.0,
                         1e4, -0.0, 5.5, -5.5])
    gate_up = torch.cat([gate, torch.linspace(-2, 2, gate.numel())]).unsqueeze(0)
    torch.testing.assert_close(pw.silu_mul(gate_up), _plain_silu_mul(gate_up), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [17, 576, 4096])
@pytest.mark.parametrize("rows", [1, 7, 100])
def test_bf16_follows_torch_bf16_roundings(pw, rows: int, width: int) -> None:
    torch.manual_seed(width + rows)
    bf = torch.bfloat16
    norm = _norm(width, 1e-5, bf)
    x, residual = (torch.randn(rows, width) * 3).to(bf), torch.randn(rows, width).to(bf)
    torch.testing.assert_close(pw.rms_norm(x, norm.weight, 1e-5).float(), norm(x).float(), **BF16_TOL)
    expected_sum = residual + x  # rounded to bf16, as the kernel must round it
    expected = norm(expected_sum)
    got = pw.add_rms_norm(x, residual, norm.weight, 1e-5)
    assert got.dtype == bf and residual.dtype == bf
    torch.testing.assert_close(residual, expected_sum, rtol=0, atol=0)
    torch.testing.assert_close(got.float(), expected.float(), **BF16_TOL)
    gate_up = (torch.randn(rows, 2 * width) * 4).to(bf)
    got = pw.silu_mul(gate_up)
    assert got.dtype == bf
    torch.testing.assert_close(got.float(), _plain_silu_mul(gate_up).float(), **BF16_TOL)


def test_mixed_dtypes_of_a_quantized_mlp(pw) -> None:
    """An fp32 model whose MLP runs bf16 linears: the norm can hand them bf16, the activation take and give
    bf16, the next add take the bf16 output; all computed in fp32 as PyTorch's casts would."""
    torch.manual_seed(3)
    norm = _norm(960, 1e-5)
    x, residual = torch.randn(5, 960) * 3, torch.randn(5, 960)
    expected = norm(residual + x).to(torch.bfloat16)
    got = pw.add_rms_norm(x, residual, norm.weight, 1e-5, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and residual.dtype == torch.float32
    torch.testing.assert_close(got.float(), expected.float(), **BF16_TOL)
    down_out = torch.randn(5, 960).to(torch.bfloat16)
    before = residual.clone()
    got = pw.add_rms_norm(down_out, residual, norm.weight, 1e-5)
    torch.testing.assert_close(residual, before + down_out.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, norm(before + down_out.float()), rtol=1e-5, atol=1e-5)
    gate_up = (torch.randn(5, 2 * 1536) * 4).to(torch.bfloat16)
    got = pw.silu_mul(gate_up, out_dtype=torch.bfloat16, rounding=torch.float32)
    expected = _plain_silu_mul(gate_up.float()).to(torch.bfloat16)
    torch.testing.assert_close(got.float(), expected.float(), **BF16_TOL)


def test_leading_dims_and_threads(pw) -> None:
    """(B, T, n) inputs are rows too; large calls take the OpenMP path (2 threads), small ones stay serial."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(1)
        norm = _norm(4096, 1e-6)
        x, residual = torch.randn(4, 64, 4096), torch.randn(4, 64, 4096)
        torch.testing.assert_close(pw.rms_norm(x, norm.weight, 1e-6), norm(x), rtol=1e-5, atol=1e-5)
        expected = norm(residual + x)
        torch.testing.assert_close(pw.add_rms_norm(x, residual, norm.weight, 1e-6), expected, rtol=1e-5, atol=1e-5)
        gate_up = torch.randn(3, 50, 2 * 2048)
        got = pw.silu_mul(gate_up)
        assert got.shape == (3, 50, 2048)
        torch.testing.assert_close(got, _plain_silu_mul(gate_up), rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(saved)


def test_scalar_build_matches_torch(pw, scalar_lib, monkeypatch) -> None:
    monkeypatch.setattr(pw, "library", lambda: scalar_lib)
    torch.manual_seed(2)
    for rows, width in [(1, 17), (7, 576), (100, 960)]:
        norm = _norm(width, 1e-5)
        x, residual = torch.randn(rows, width) * 3, torch.randn(rows, width)
        torch.testing.assert_close(pw.rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-5, atol=1e-5)
        expected = norm(residual + x)
        torch.testing.assert_close(pw.add_rms_norm(x, residual, norm.weight, 1e-5), expected, rtol=1e-5, atol=1e-5)
        gate_up = torch.randn(rows, 2 * width) * 4
        torch.testing.assert_close(pw.silu_mul(gate_up), _plain_silu_mul(gate_up), rtol=1e-5, atol=1e-6)
        bf = torch.bfloat16
        nb, xb, rb = _norm(width, 1e-5, bf), x.to(bf), residual.to(bf)
        expected = nb(rb + xb)
        torch.testing.assert_close(pw.add_rms_norm(xb, rb, nb.weight, 1e-5).float(), expected.float(), **BF16_TOL)
        torch.testing.assert_close(pw.silu_mul(gate_up.to(bf)).float(), _plain_silu_mul(gate_up.to(bf)).float(),
                                   **BF16_TOL)


def test_programming_errors_are_value_errors(pw) -> None:
    w = torch.ones(16)
    with pytest.raises(ValueError, match="contiguous"):
        pw.rms_norm(torch.randn(16, 4).t(), w, 1e-6)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        pw.rms_norm(torch.randn(4, 16, dtype=torch.float16), w, 1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        pw.rms_norm(torch.randn(4, 8), w, 1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        pw.add_rms_norm(torch.randn(4, 16), torch.randn(3, 16), w, 1e-6)
    with pytest.raises(ValueError, match="odd width"):
        pw.silu_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="out_dtype"):
        pw.silu_mul(torch.randn(2, 8), out_dtype=torch.float16)


def test_modules_swap_and_fall_back(pw) -> None:
    """The swap changes only the modules' classes (same parameters); with grad on, or an input the kernels
    do not take, they run their parents' PyTorch code; use_pytorch_paths swaps back."""
    from model.layers.mlp import GatedMLP
    from model.layers.norm import RMSNorm

    torch.manual_seed(4)
    net = torch.nn.ModuleDict({"norm": RMSNorm(64, 1e-5), "mlp": GatedMLP(64, 96)})
    net.norm.weight.data += torch.randn(64) * 0.1
    weight = net.norm.weight
    x, residual = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        plain = (net.norm(x), net.norm.add_norm(x, residual), net.mlp(x))
    assert pw.use_pointwise_kernels(net) == 2
    assert type(net.norm) is pw.KernelRMSNorm and type(net.mlp) is pw.KernelGatedMLP and net.norm.weight is weight
    with torch.inference_mode():
        r = residual.clone()
        normed, r_out = net.norm.add_norm(x, r)
        assert r_out is r  # in place
        torch.testing.assert_close(normed, plain[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r, plain[1][1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(net.norm(x), plain[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.mlp(x), plain[2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.norm(x.t().contiguous().t()), plain[0], rtol=1e-5, atol=1e-5)  # strided
        with pytest.raises(RuntimeError):  # a width the weight does not have: PyTorch's error, no stray read
            net.norm(torch.randn(2, 32))
    # training: gradients flow through the PyTorch code, the residual is not written
    xg, r = x.clone().requires_grad_(), residual.clone()
    normed, r_out = net.norm.add_norm(xg, r)
    (normed.sum() + net.mlp(xg).sum()).backward()
    assert xg.grad is not None and net.mlp.gate_up_proj.weight.grad is not None
    torch.testing.assert_close(r, residual, rtol=0, atol=0)
    assert pw.use_pytorch_paths(net) == 2
    assert type(net.norm) is RMSNorm and type(net.mlp) is GatedMLP


def test_timing_candidates_run_the_models_ops(pw) -> None:
    from model.engine.cpu_choices import pick

    model = _tiny_model()
    candidates = pw.timing_candidates(model)
    assert set(candidates) == {"plain", "kernel"}
    choice = pick("pointwise", candidates, [1, 4], timer=lambda label, work: (work(), 1.0)[1])
    assert choice.chosen == "plain"  # equal timings: the plain path stays
    assert pw.timing_candidates(torch.nn.Linear(2, 2)) == {}


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_mlp_passes_bf16_between_its_linears(pw, method: str) -> None:
    """An fp32 model over int8/int4 linears: the swapped MLP hands bf16 from one linear to the next and out
    (no casts back and forth), with what the plain path computes; the network's output agrees; a projection
    wrapped by something else (a LoRA adapter) puts the MLP back on the fp32 path."""
    from model.quant import QuantSpec, quantize_model

    torch.manual_seed(5)
    model = _tiny_model(hidden=64, intermediate=128)
    quantize_model(model, QuantSpec(method, 32, embeddings=False))
    ids = torch.randint(0, 64, (2, 9))
    with torch.inference_mode():
        plain = model(ids)
        x = torch.randn(3, 64)
        plain_mlp = model.layers[0].mlp(x)
        pw.use_pointwise_kernels(model)
        mlp = model.layers[0].mlp
        assert all(layer.mlp.bf16_linears for layer in model.layers)
        got = mlp(x)
        assert got.dtype == torch.bfloat16 and plain_mlp.dtype == torch.float32
        torch.testing.assert_close(got.float(), plain_mlp, **BF16_TOL)
        torch.testing.assert_close(model(ids), plain, rtol=1e-3, atol=1e-3)
        mlp.gate_up_proj = torch.nn.Sequential(mlp.gate_up_proj)  # a wrapper the fold does not know
        assert mlp(x).dtype == torch.float32
        torch.testing.assert_close(mlp(x), plain_mlp, rtol=1e-5, atol=1e-5)


def _tiny_model(hidden: int = 32, intermediate: int = 48):
    from model.config import ModelConfig
    from model.models.decoder import CausalLM

    cfg = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": hidden,
                                    "intermediate_size": intermediate, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64})
    model = CausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


# ---- the engine: greedy output with the kernels swapped in equals PyTorch's paths, under batching ----------

def _greedy(engine, prompts: list[list[int]], lengths: list[int]) -> dict[str, list[int]]:
    from model import SamplingParams

    for i, (p, n) in enumerate(zip(prompts, lengths)):
        engine.add_request(f"r{i}", p, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return tokens


def _kernel_engine_equals_torch_engine(path: str, vocab: int, quantization: str = "none", dtype: str = "auto") -> None:
    from model import EngineConfig, LLMEngine
    from model.kernels import pointwise
    from model.layers.norm import RMSNorm

    # no prefix cache: the second run recomputes every prompt rather than reusing the first run's K/V
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, kv_cache_memory=16 << 20,
                          enable_prefix_caching=False, quantization=quantization, dtype=dtype)
    engine = LLMEngine.from_model(path, config)
    model = engine.runner.model
    if not any(type(m) is pointwise.KernelRMSNorm for m in model.modules()):
        # the start-up measurement kept PyTorch on this host (or the oneDNN gate was off): put them in anyway
        assert pointwise.use_pointwise_kernels(model) > 0
    if quantization != "none":  # the MLPs pass bf16 between their bf16-computing quantized linears
        for layer in model.layers:
            mlp = layer.mlp
            assert mlp.bf16_linears == (pointwise._bf16_quantized(mlp.gate_up_proj)
                                        and pointwise._bf16_quantized(mlp.down_proj))
    assert not any(type(m) is RMSNorm for m in model.modules() if getattr(m, "weight", None) is not None
                   and m.weight.shape[0] == model.config.hidden_size)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 70))] for _ in range(8)]
    lengths = [6 + 2 * i for i in range(8)]
    with_kernels = _greedy(engine, prompts, lengths)
    assert [len(with_kernels[f"r{i}"]) for i in range(8)] == lengths
    assert pointwise.use_pytorch_paths(model) > 0  # the same engine, weights and cache: PyTorch's ops only
    assert with_kernels == _greedy(engine, prompts, lengths)


@pytest.mark.parametrize("quantization,dtype", [("none", "float32"), ("int8", "float32"), ("int4", "float32"),
                                                ("none", "bfloat16")])
def test_engine_greedy_with_kernels_equals_torch_paths_llama(pw, tiny_llama_dir: str, quantization: str,
                                                             dtype: str) -> None:
    _kernel_engine_equals_torch_engine(tiny_llama_dir, 49152, quantization, dtype)


def test_engine_greedy_with_kernels_equals_torch_paths_glm4_sandwich(pw, tmp_path_factory) -> None:
    from model.config import ModelConfig
    from tests.helpers import glm_replicas

    path = glm_replicas.build_glm4_0414_replica(tmp_path_factory.mktemp("glm") / "GLM-4-9B-0414")
    cfg = ModelConfig.from_hf_dict(json.loads((Path(path) / "config.json").read_text()))
    assert cfg.post_sublayer_norms  # GLM-4-0414: sandwich norms, partial interleaved rotary
    _kernel_engine_equals_torch_engine(path, cfg.vocab_size)


def test_int8_linears_on_their_fp32_kernel_keep_the_fp32_mlp(pw) -> None:
    """Int8Linear.cpu_kernel (a C kernel with fp32 activations): feeding it bf16 would put it back on
    PyTorch's bf16 kernel, so the MLP stays fp32 there."""
    from model.quant import QuantSpec, quantize_model

    torch.manual_seed(6)
    model = _tiny_model(hidden=64, intermediate=128)
    quantize_model(model, QuantSpec("int8", 32, embeddings=False))
    pw.use_pointwise_kernels(model)
    mlp = model.layers[0].mlp
    x = torch.randn(2, 64)
    with torch.inference_mode():
        assert mlp(x).dtype == torch.bfloat16
        mlp.gate_up_proj.cpu_kernel = True
        assert mlp(x).dtype == torch.float32


def test_enforce_eager_keeps_pytorch_modules(pw, tiny_llama_dir: str) -> None:
    from model import EngineConfig, LLMEngine

    engine = LLMEngine.from_model(tiny_llama_dir, EngineConfig(max_num_seqs=2, kv_cache_memory=4 << 20,
                                                               enforce_eager=True))
    kinds = {type(m) for m in engine.runner.model.modules()}
    assert pw.KernelRMSNorm not in kinds and pw.KernelGatedMLP not in kinds

"""The int8 and int4 weight-only C kernels (model/kernels/qlinear.py) against the matmul of their dequantized
weights, computed on this machine; their batch invariance (a row's result whatever the batch, the threads);
Int8Linear / Int4Linear using them; the start-up choice on given timings; and a quantized engine on the
kernels: batch-invariant greedy output and the same tokens as the engine on PyTorch's kernels."""
from __future__ import annotations

import random

import pytest
import torch

from model.kernels import build

pytestmark = [
    pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH: the kernels cannot be built"),
    pytest.mark.skipif(not build.enabled(), reason="GLMSERVE_KERNELS=0 turns the kernels off"),
]


@pytest.fixture(scope="module")
def ql():
    from model.kernels import qlinear

    assert qlinear.library() is not None, "a compiler exists but csrc/qlinear.c did not build or load"
    if not qlinear.available():
        pytest.skip("this CPU has no AVX512_BF16: the kernel is never chosen here")
    return qlinear


def _case(m: int, k: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, generator=g) * 0.02 + 1e-3).to(torch.bfloat16)
    return x, w, scales


def _reference(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # the kernel's arithmetic (csrc/qlinear.c): each row of x scaled to int16 by its absmax (fp32 steps, nearest
    # even), exact integer dot products, then dot * amax / 32767 * scale in double, rounded once to fp32
    amax = x.abs().amax(dim=1, keepdim=True)
    xq = torch.round(x * (torch.full_like(amax, 32767.0) / amax))  # a true division (32767 / t is 32767 * 1 / t)
    dot = xq.double() @ w.double().t()
    return (dot * (amax.double() / 32767.0) * scales.double()).float()


@pytest.mark.parametrize("m", [1, 2, 5, 6, 7, 8, 9, 13, 32, 64, 129])
@pytest.mark.parametrize("k,n", [(16, 4), (17, 5), (100, 1001), (576, 960), (1536, 576), (4100, 9), (8200, 7)])
def test_kernel_equals_the_dequantized_matmul(ql, m: int, k: int, n: int) -> None:
    x, w, scales = _case(m, k, n)
    y = ql.int8_linear(x, w, scales)
    assert y.shape == (m, n)
    # the same arithmetic in torch: equal up to the last rounding to fp32 (the integer part is exact)
    ref = _reference(x, w, scales)
    assert torch.allclose(y, ref, rtol=2 ** -22, atol=1e-30)
    # and the float matmul of the dequantized weight, within x's int16 rounding: half a step per element
    exact = x.double() @ (w.double() * scales.double().unsqueeze(1)).t()
    step = x.abs().amax(dim=1, keepdim=True).double() / 32767
    bound = 0.5 * step * (w.double().abs() * scales.double().unsqueeze(1)).sum(dim=1) + exact.abs() * 2 ** -22
    assert ((y.double() - exact).abs() <= bound).all()


def test_zero_and_non_finite_rows(ql) -> None:
    x, w, scales = _case(3, 64, 8)
    x[1] = 0.0
    x[2, 5] = float("nan")
    bias_free = ql.int8_linear(x, w, scales)
    assert torch.equal(bias_free[1], torch.zeros(8))
    assert bias_free[2].isnan().all()
    assert torch.equal(bias_free[0], ql.int8_linear(x[:1].contiguous(), w, scales)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_gets_the_same_bits_alone_or_in_any_batch(ql, threads: int) -> None:
    x, w, scales = _case(37, 576, 203, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batched = ql.int8_linear(x, w, scales)
        alone = torch.cat([ql.int8_linear(x[i:i + 1].contiguous(), w, scales) for i in range(37)])
        split = torch.cat([ql.int8_linear(x[:11].contiguous(), w, scales), ql.int8_linear(x[11:].contiguous(), w, scales)])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(batched, alone)
    assert torch.equal(batched, split)


def _int4_case(m: int, k: int, n: int, g: int, seed: int = 0):
    from model.quant.kernels import pack_int4

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    sz = (torch.randn(k // g, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    w = (q.double() - 8) * sz[..., 0].double().t().repeat_interleave(g, 1) + sz[..., 1].double().t().repeat_interleave(g, 1)
    return x, pack_int4(q, torch.device("cpu")), sz, w


@pytest.mark.parametrize("m", [1, 3, 4, 5, 32, 67])
@pytest.mark.parametrize("k,n,g", [(64, 64, 32), (576, 960, 32), (1536, 576, 32), (1024, 128, 128), (2112, 192, 64)])
def test_int4_kernel_equals_the_dequantized_matmul(ql, m: int, k: int, n: int, g: int) -> None:
    x, packed, sz, w = _int4_case(m, k, n, g)
    assert ql.int4_supported(n, k, g)
    y = ql.int4_linear(x, packed, g, sz, n)
    xb = x.to(torch.bfloat16).double()
    ref = xb @ w.t()
    # fp32 sums; the 128 + q codes make each group's dot ~(136 / 8) x larger than the term it stands for
    bound = (xb.abs() @ (w.abs() + 136 * sz[..., 0].double().abs().t().repeat_interleave(g, 1)).t()) * (k * 2 ** -23) + 1e-5
    assert ((y.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_int4_rows_get_the_same_bits_alone_or_in_any_batch(ql, threads: int) -> None:
    # 41 rows take the buffered path, 1 to 32 rows the register one (qlinear.c, Q4_DIRECT_ROWS): same bits
    x, packed, sz, _ = _int4_case(41, 576, 192, 32, seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batched = ql.int4_linear(x, packed, 32, sz, 192)
        alone = torch.cat([ql.int4_linear(x[i:i + 1].contiguous(), packed, 32, sz, 192) for i in range(41)])
        in_fives = torch.cat([ql.int4_linear(x[i:i + 5].contiguous(), packed, 32, sz, 192) for i in range(0, 41, 5)])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(batched, alone)
    assert torch.equal(batched, in_fives)


def test_int4_shapes_outside_the_kernel_are_named(ql) -> None:
    assert not ql.int4_supported(48, 64, 32)  # not whole 64-row blocks
    assert not ql.int4_supported(64, 64, 16)
    x, packed, sz, _ = _int4_case(2, 64, 64, 32)
    with pytest.raises(ValueError, match="packed"):
        ql.int4_linear(x, packed, 32, sz, 128)


def test_bad_arguments_are_refused(ql) -> None:
    x, w, scales = _case(2, 32, 8)
    with pytest.raises(ValueError, match="fp32 x"):
        ql.int8_linear(x.double(), w, scales)
    with pytest.raises(ValueError, match="contiguous"):
        ql.int8_linear(x.t().contiguous().t(), w, scales)
    with pytest.raises(ValueError, match="weight"):
        ql.int8_linear(x, w[:, :16].contiguous(), scales)


def test_int4_linear_module_uses_the_kernel_only_when_chosen(ql) -> None:
    from model.quant.modules import Int4Linear

    x, packed, sz, _ = _int4_case(3, 128, 64, 32, seed=6)
    module = Int4Linear(packed, sz, 32, 128, 64)
    with torch.inference_mode():
        torch_path = module(x)
        module.cpu_kernel = True
        kernel_path = module(x)
    assert torch.equal(kernel_path, ql.int4_linear(x, packed, 32, sz, 64))
    torch.testing.assert_close(kernel_path, torch_path, rtol=2e-2, atol=5e-2)  # torch's output is bf16-rounded


def test_int8_linear_module_uses_the_kernel_only_when_chosen(ql) -> None:
    from model.quant.modules import Int8Linear

    x, w, scales = _case(3, 64, 24, seed=5)
    bias = torch.randn(24)
    module = Int8Linear(w, scales, bias)
    with torch.inference_mode():
        torch_path = module(x)
        module.cpu_kernel = True
        kernel_path = module(x)
        halves = module(x.to(torch.bfloat16))  # not fp32: PyTorch's kernel, whatever was chosen
    assert torch.equal(kernel_path, ql.int8_linear(x, w, scales) + bias)
    torch.testing.assert_close(kernel_path, torch_path, rtol=2e-2, atol=2e-2)  # torch's output is bf16-rounded
    assert halves.dtype == torch.bfloat16


def test_the_choice_follows_the_timings(ql) -> None:
    from model.engine.cpu_choices import choose_quant_kernels
    from model.quant.modules import Int4Linear, Int8Linear

    _, packed, sz, _ = _int4_case(1, 64, 64, 32)
    _, narrow, narrow_sz, _ = _int4_case(1, 64, 48, 32)
    model = torch.nn.Sequential(Int8Linear(*_case(1, 64, 32)[1:]), Int8Linear(*_case(1, 64, 32)[1:]),
                                Int8Linear(*_case(1, 32, 16)[1:]), Int4Linear(packed, sz, 32, 64, 64),
                                Int4Linear(narrow, narrow_sz, 32, 64, 48))  # 48 rows: not the kernel's

    def timer(fast: str):
        return lambda label, work: (work(), 1.0 if f"/{fast}/" in label else 2.0)[1]

    choices = choose_quant_kernels(model, 8, timer=timer("kernel"))
    assert [c.chosen for c in choices] == ["kernel", "kernel", "kernel"]
    assert [m.cpu_kernel for m in model] == [True, True, True, True, False]
    choose_quant_kernels(model, 8, timer=timer("torch"))
    assert not any(m.cpu_kernel for m in model)


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(40, 90))] for _ in range(count)]


def _force(engine, on: bool) -> int:
    from model.kernels.qlinear import int4_supported
    from model.quant.modules import Int4Linear, Int8Linear

    forced = 0
    for module in engine.runner.model.modules():
        if type(module) is Int8Linear or (type(module) is Int4Linear and int4_supported(
                module.out_features, module.in_features, module.group_size)):
            module.cpu_kernel = on
            forced += 1
    return forced


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_engine_on_the_kernels_is_batch_invariant_and_agrees_with_torch(ql, tiny_llama_dir: str,
                                                                                   method: str) -> None:
    from model import EngineConfig, LLMEngine, SamplingParams
    from model.engine.model_runner import kv_bytes_per_block

    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    target, *others = _prompts(5, seed=11)
    alone = LLMEngine.from_model(tiny_llama_dir, EngineConfig(quantization=method, kv_cache_memory=32 << 20))
    assert _force(alone, True) > 0
    expected = alone.generate([target], params)[0][0].token_ids
    _force(alone, False)
    assert alone.generate([target], params)[0][0].token_ids == expected  # PyTorch's bf16 kernels: same tokens

    block = kv_bytes_per_block(alone.model_config, 16, torch.float32)
    mixed = LLMEngine.from_model(tiny_llama_dir, EngineConfig(quantization=method, max_num_batched_tokens=32,
                                                              max_num_seqs=5, kv_cache_memory=14 * block))
    _force(mixed, True)
    outs = mixed.generate(others[:2] + [target] + others[2:], params)
    assert mixed.scheduler.num_preemptions > 0
    assert outs[2][0].token_ids == expected

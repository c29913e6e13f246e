"""The decode-sized linear kernel (model/kernels/linear.py) against F.linear computed on this machine over
many shapes (SIMD-width remainders of K, tile remainders of N and of the rows, bias or not, 1 and 2 threads);
KernelLinear: the model's own weight tensor, F.linear past its row limit and for what the kernel does not
take; the start-up choice swapping it in on given timings; an engine with every linear on the kernel giving
the plain engine's greedy tokens under concurrent requests; LoRA over a KernelLinear base."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import build

pytestmark = [
    pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH: the kernels cannot be built"),
    pytest.mark.skipif(not build.enabled(), reason="GLMSERVE_KERNELS=0 turns the kernels off"),
]

ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 13, 32, 33, 64]
INNER = [16, 17, 576, 1536, 100]
OUTER = [1, 3, 64, 960, 1001]
EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def kl():
    from model.kernels import linear

    assert linear.library() is not None, "a compiler exists but csrc/linear.c did not build or load"
    return linear


def assert_close_to_linear(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """Within the rounding bound of two fp32 dot products of length K summed in different orders:
    |a - b| <= 2 K eps sum_k |x_k w_k|, plus the output's rounding (the bias's in fp32; one bf16 unit for
    bf16, whose fp32 sums may fall either side of a rounding boundary), against F.linear on this machine."""
    assert got.dtype == x.dtype
    want = F.linear(x, w, b).float()
    got = got.float()
    k = x.shape[-1]
    unit = 2.0 ** -7 if x.dtype == torch.bfloat16 else 4 * EPS
    bound = 2 * k * EPS * (x.float().abs() @ w.float().abs().t()) + unit * torch.maximum(want.abs(), got.abs())
    bound += 1e-30
    err = (got - want).abs()
    assert got.shape == want.shape
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}, its bound {bound[err > bound].min():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", INNER)
def test_kernel_matches_f_linear_over_rows_outputs_and_bias(kl, k: int, threads: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(k * 10 + threads)
    for n in OUTER:
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype)
        for m in ROWS:
            x = torch.randn(m, k, generator=g).to(dtype)
            for bias in (None, b):
                assert_close_to_linear(kl.linear(x, w, bias, threads=threads), x, w, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_sized_rows_are_cut_into_blocks_with_the_same_results(kl, dtype: torch.dtype) -> None:
    """The kernel cuts x into L2-sized row blocks (84 rows of K=1536 fp32, 32 of K=4000): several blocks and
    a short last one."""
    g = torch.Generator().manual_seed(2)
    for m, k, n in ((301, 1536, 67), (100, 4000, 24), (kl.MAX_ROWS, 576, 40)):
        x = torch.randn(m, k, generator=g).to(dtype)
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype)
        assert_close_to_linear(kl.linear(x, w, b, threads=2), x, w, b)


def test_kernel_takes_leading_dims_and_checks_its_inputs(kl) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 24, generator=g)
    x = torch.randn(2, 3, 24, generator=g)
    got = kl.linear(x, w)
    assert got.shape == (2, 3, 40)
    assert_close_to_linear(got, x, w, None)
    with pytest.raises(ValueError):
        kl.linear(x.to(torch.float64), w)
    with pytest.raises(ValueError):
        kl.linear(x.to(torch.bfloat16), w)  # x and W of one dtype
    with pytest.raises(ValueError):
        kl.linear(torch.randn(3, 25), w)
    with pytest.raises(ValueError):
        kl.linear(torch.randn(24, 3).t(), w)  # not contiguous
    with pytest.raises(ValueError):
        kl.linear(torch.randn(3, 24), w, torch.randn(39))


def counted(module):
    """Counts the module's calls into the C function (the real one still does the work)."""
    real, calls = module.kernel, []
    if real is None:  # a module that never calls the kernel stays as it is
        return calls

    def fn(*args):
        calls.append(args[4])  # rows
        return real(*args)
    module.kernel = fn
    return calls


def test_kernel_linear_uses_the_kernel_up_to_its_row_limit_then_f_linear(kl) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(48, 72).eval()
    mod = kl.KernelLinear(lin)
    calls = counted(mod)
    with torch.inference_mode():
        for rows in (1, 5, kl.MAX_ROWS, kl.MAX_ROWS + 1, 3 * kl.MAX_ROWS):
            x = torch.randn(rows, 48)
            assert_close_to_linear(mod(x), x, lin.weight, lin.bias)
        x3 = torch.randn(2, 7, 48)  # (batch, tokens, hidden): 14 rows
        assert_close_to_linear(mod(x3), x3, lin.weight, lin.bias)
        mod(torch.randn(48, 4).t())  # a non-contiguous input goes to F.linear
    assert calls == [1, 5, kl.MAX_ROWS, 14]
    half = kl.KernelLinear(nn.Linear(48, 24, dtype=torch.bfloat16))  # a bf16 model's projection
    half_calls = counted(half)
    with torch.inference_mode():
        for rows in (3, kl.MAX_ROWS + 3):  # the kernel, F.linear
            x = torch.randn(rows, 48, dtype=torch.bfloat16)
            assert_close_to_linear(half(x), x, half.weight, half.bias)
        with pytest.raises(RuntimeError):  # fp32 rows into a bf16 module: F.linear's dtype error, not a wrong read
            half(torch.randn(2, 48))
    assert half_calls == [3]
    wide = kl.KernelLinear(nn.Linear(48, 8, dtype=torch.float64))  # a dtype the kernel does not take
    assert wide.kernel is None
    x = torch.randn(3, 48, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(wide(x), F.linear(x, wide.weight, wide.bias))


def test_kernel_linear_holds_the_linear_s_own_parameters_and_keeps_autograd(kl) -> None:
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight  # tied, as the default model's lm_head
    mod = kl.KernelLinear(head)
    assert mod.weight is emb.weight and mod.bias is None
    with torch.no_grad():
        emb.weight[3] += 1.0  # an in-place update of the table is what the module computes with
    x = torch.randn(2, 32)
    with torch.inference_mode():
        assert_close_to_linear(mod(x), x, emb.weight.detach(), None)
    x.requires_grad_(True)
    mod(x).sum().backward()  # with autograd on, the F.linear path: gradients flow
    assert emb.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_start_up_choice_swaps_the_kernel_in_where_it_measured_faster(kl, dtype: torch.dtype) -> None:
    from model.engine.cpu_choices import choose_linear_packing
    from model.engine.cpu_packing import PackedLinear

    class TwoShapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = nn.Linear(16, 48, bias=False), nn.Linear(16, 48, bias=False)
            self.b = nn.Linear(48, 16, bias=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a1(x) + self.a2(x))

    torch.manual_seed(0)
    model = TwoShapes().eval().to(dtype)
    weights = [model.a1.weight, model.a2.weight]
    x = torch.randn(5, 16).to(dtype)
    expected = model(x)
    # the kernel wins 16->48, oneDNN packing 48->16 (every candidate still runs, so each is exercised)
    table = {"16->48": {"plain": 1.0, "packed": 0.8, "kernel": 0.5}, "48->16": {"plain": 1.0, "packed": 0.5,
                                                                               "kernel": 0.9}}

    def timer(label: str, work) -> float:
        work()
        shape = label.split()[1]
        return table[shape][label.rsplit("/", 2)[1]]

    choices = choose_linear_packing(model, batch_rows=8, timer=timer)
    suffix = "" if dtype == torch.float32 else " bfloat16"  # a bf16 model's choices are its own
    assert {c.what: c.chosen for c in choices} == {f"linear 16->48 x2{suffix}": "kernel",
                                                   f"linear 48->16 x1{suffix}": "packed"}
    assert type(model.a1) is kl.KernelLinear and type(model.a2) is kl.KernelLinear
    assert [model.a1.weight, model.a2.weight] == weights and model.a1.weight is weights[0]  # no copy
    assert isinstance(model.b, PackedLinear)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=tol, atol=tol)


def use_kernel_everywhere(model: nn.Module, kl) -> int:
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, kl.KernelLinear(child))
                count += 1
    return count


def test_engine_on_the_kernel_gives_the_plain_engine_s_greedy_tokens(kl, tiny_llama_dir) -> None:
    """Every projection (and the tied head) on KernelLinear; 12 concurrent requests, so decode batches of
    1..12 rows run on the kernel, and with the row limit at 16, prefill chunks (up to 96 rows) on both."""
    from model import EngineConfig, LLMEngine, SamplingParams

    config = EngineConfig(max_num_seqs=12, max_num_batched_tokens=96, kv_cache_memory=16 << 20, enforce_eager=True)
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 49152) for _ in range(rng.randint(3, 120))] for _ in range(12)]
    params = [SamplingParams(temperature=0, max_tokens=6 + 2 * i, min_tokens=6 + 2 * i) for i in range(12)]

    def run(engine: LLMEngine) -> dict[str, list[int]]:
        tokens = {f"r{i}": [] for i in range(len(prompts))}
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.add_request(f"r{i}", p, sp)
        while engine.has_unfinished():
            for out in engine.step():
                tokens[out.request_id] += out.token_ids
        return tokens

    plain = run(LLMEngine.from_model(tiny_llama_dir, config))
    engine = LLMEngine.from_model(tiny_llama_dir, config)
    assert use_kernel_everywhere(engine.runner.model, kl) >= 2 * 4  # qkv/o/gate_up/down per layer at least
    for module in engine.runner.model.modules():
        if isinstance(module, kl.KernelLinear):
            module.max_rows = 16
    calls = counted(engine.runner.model.layers[0].mlp.down_proj)
    assert run(engine) == plain
    assert calls and max(calls) > 1 and max(calls) <= 16  # the kernel ran, decode batches included


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, str]:
    from tests.lora.adapters import make_peft_adapter

    root = tmp_path_factory.mktemp("kernel-adapters")
    return {f"a{i}": make_peft_adapter(tiny_llama_dir, root / f"a{i}", seed=i, rank=rank, scale=3.0)[0]
            for i, rank in ((1, 4), (2, 8))}


def test_lora_over_a_kernel_linear_base_equals_lora_over_nn_linear(kl, tiny_llama_dir, adapters) -> None:
    from model.loader import load_model
    from model.lora import LoRAManager

    managers = []
    for kernel in (False, True):
        model = load_model(tiny_llama_dir).model.eval()
        if kernel:
            use_kernel_everywhere(model, kl)
        manager = LoRAManager(model, max_loras=3, max_lora_rank=64, pack=False)
        for name in sorted(adapters):
            manager.load(name, adapters[name])
        managers.append(manager)
    plain, kernel = managers
    layer = kernel.model.layers[1]
    assert type(layer.attn.qkv_proj.base) is kl.KernelLinear
    ids = [a.lora_id for a in sorted(plain.adapters.values(), key=lambda a: a.name)]
    kids = [a.lora_id for a in sorted(kernel.adapters.values(), key=lambda a: a.name)]
    spans = [(0, 2), (1, 3), (0, 1), (2, 2), (1, 1)]  # (adapter position or 0 for the base, rows)
    g = torch.Generator().manual_seed(0)
    for attr in ("attn.qkv_proj", "mlp.down_proj"):
        owner, name = attr.split(".")
        projections = [getattr(getattr(m.model.layers[1], owner), name) for m in managers]
        x = torch.randn(sum(n for _, n in spans), projections[0].base.in_features, generator=g)
        outs = []
        for manager, proj, by in zip(managers, projections, (ids, kids)):
            with torch.inference_mode():
                manager.prepare_step([(by[p - 1] if p else 0, n) for p, n in spans])
                outs.append(proj(x))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)

"""The fused decoder (model/kernels/decode.py): a pure decode step's layers in one C call give the module
path's hidden states bit for bit (fp32, int8 and int4 projections, bf16 models; Llama, ChatGLM3's interleaved partial
RoPE, GLM-4-0414's sandwich norms), the engine's greedy output is unchanged under batching, it is not built
where a layer is not all kernels, and the start-up choice follows the timings."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from model.kernels import build

pytestmark = [
    pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH: the kernels cannot be built"),
    pytest.mark.skipif(not build.enabled(), reason="GLMSERVE_KERNELS=0 turns the kernels off"),
]


@pytest.fixture(scope="module")
def kernels_ready():
    from model.kernels import attention, decode, linear, pointwise, qlinear

    assert decode.library() is not None, "a compiler exists but csrc/decode.c did not build or load"
    if not (attention.available() and pointwise.available() and linear.available()):
        pytest.fail("a compiler exists but a kernel library did not build")
    if not qlinear.available():
        pytest.skip("this CPU has no AVX512_BF16: the quantized kernels, and so the fused int8/int4 paths, are off")


@pytest.fixture(scope="module")
def chatglm3_dir(tmp_path_factory) -> str:
    from tests.helpers.glm_replicas import build_chatglm3_replica

    return build_chatglm3_replica(tmp_path_factory.mktemp("chatglm3") / "chatglm3-6b")


@pytest.fixture(scope="module")
def glm4_0414_dir(tmp_path_factory) -> str:
    from tests.helpers.glm_replicas import build_glm4_0414_replica

    return build_glm4_0414_replica(tmp_path_factory.mktemp("glm4-0414") / "GLM-4-9B-0414")


def _all_kernels(engine) -> None:
    """Every layer on the C kernels whatever this host's timings chose (the engine was built eager: plain
    modules), and the runner's fused decoder built over them."""
    from model.kernels import linear, pointwise
    from model.kernels.decode import FusedDecoder
    from model.quant.modules import Int4Linear, Int8Linear

    runner = engine.runner
    model = runner.model
    for layer in model.layers:
        for parent in (layer.attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, linear.KernelLinear(child))
        layer.attn.decode_paths = {1: "kernel", 2: "kernel"}
    for module in model.modules():
        if type(module) in (Int8Linear, Int4Linear):
            module.cpu_kernel = True
    pointwise.use_pointwise_kernels(model)
    for module in model.modules():
        if type(module) is pointwise.KernelGatedMLP:
            module.bf16_linears = False
    runner.fused_decoder = FusedDecoder.build(model)
    assert runner.fused_decoder is not None


def _engine(path: str, quantization: str = "none", **kw):
    from model import EngineConfig, LLMEngine

    config = EngineConfig(quantization=quantization, enforce_eager=True, kv_cache_memory=16 << 20,
                          max_num_seqs=8, max_num_batched_tokens=64, **kw)
    engine = LLMEngine.from_model(path, config)
    _all_kernels(engine)
    return engine


@pytest.mark.parametrize("quantization,dtype", [("none", "float32"), ("int8", "float32"), ("int4", "float32"),
                                                ("none", "bfloat16")])
def test_fused_step_gives_the_module_path_bits(kernels_ready, tiny_llama_dir: str, quantization: str,
                                               dtype: str) -> None:
    engine = _engine(tiny_llama_dir, quantization, dtype=dtype)
    runner = engine.runner
    with torch.inference_mode():
        for rows in (1, 3, 8):
            ids, positions, meta = runner._synthetic_decode(rows)
            ids = torch.randint(3, 1000, (rows,))
            fused = runner.fused_decoder.forward(ids, positions, meta)
            modules = runner.model(ids, positions, meta)  # writes the same K/V into the same slots again
            assert fused is not None and torch.equal(fused, modules), rows


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_projection_past_its_kernel_rows_is_called_back_with_the_module_path_bits(kernels_ready, tiny_llama_dir: str,
                                                                                  dtype: str) -> None:
    """Where the start-up choice kept a projection's kernel for small batches only (KernelLinear.max_rows, with a
    oneDNN-packed copy or F.linear past it), the fused step computes that product by calling the module back
    from the C loop: the module path's bits at every row count, its kernel below the limit."""
    from model.engine.cpu_packing import PackedLinear
    from model.kernels import linear
    from model.kernels.decode import FusedDecoder

    engine = _engine(tiny_llama_dir, dtype=dtype)
    runner = engine.runner
    model = runner.model
    mlp, attn = model.layers[1].mlp, model.layers[0].attn
    assert type(mlp.down_proj) is linear.KernelLinear and type(attn.qkv_proj) is linear.KernelLinear
    mlp.down_proj.max_rows = 2  # F.linear past 2 rows
    attn.qkv_proj.max_rows, attn.qkv_proj.above = 1, PackedLinear(attn.qkv_proj)  # a packed copy past 1 row
    fused = FusedDecoder.build(model)
    calls = []
    inner = fused._above

    def counted(projection: int, x: int, rows: int):
        calls.append((projection, rows))
        return inner(projection, x, rows)

    fused._above = counted
    fused.decoder.above = fused._callback = type(fused._callback)(counted)
    with torch.inference_mode():
        for rows in (1, 2, 3, 8):
            calls.clear()
            ids, positions, meta = runner._synthetic_decode(rows)
            ids = torch.randint(3, 1000, (rows,))
            out = fused.forward(ids, positions, meta)
            assert torch.equal(out, model(ids, positions, meta)), rows
            # projection ids: layer * 4 + (qkv, o, gate_up, down)
            assert sorted(calls) == sorted(([(0, rows)] if rows > 1 else []) + ([(7, rows)] if rows > 2 else []))


def test_an_error_inside_the_callback_is_raised_by_the_step(kernels_ready, tiny_llama_dir: str) -> None:
    from model.kernels.decode import FusedDecoder

    engine = _engine(tiny_llama_dir)
    model = engine.runner.model
    down = model.layers[0].mlp.down_proj
    down.max_rows = 0

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("the copy is gone")

    down.above = Broken()
    fused = FusedDecoder.build(model)
    ids, positions, meta = engine.runner._synthetic_decode(2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="the copy is gone"):
        fused.forward(ids, positions, meta)
    down.above = None  # F.linear past 0 rows: the step runs again
    with torch.inference_mode():
        assert torch.equal(fused.forward(ids, positions, meta), model(ids, positions, meta))


def _greedy(engine, prompts, n: int) -> list[list[int]]:
    from model import SamplingParams

    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    return [o[0].token_ids for o in outs]


@pytest.mark.parametrize("which", ["llama-int4", "chatglm3", "glm4-0414"])
def test_engine_greedy_output_is_the_same_with_and_without_the_fused_step(kernels_ready, which: str, request) -> None:
    path = request.getfixturevalue({"llama-int4": "tiny_llama_dir", "chatglm3": "chatglm3_dir",
                                    "glm4-0414": "glm4_0414_dir"}[which])
    engine = _engine(path, "int4" if which == "llama-int4" else "none")
    vocab = engine.model_config.vocab_size
    rng = random.Random(7)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(5, 40))] for _ in range(6)]
    calls = 0
    fused = engine.runner.fused_decoder
    inner = fused.forward

    def counted(*args):
        nonlocal calls
        out = inner(*args)
        calls += out is not None
        return out

    fused.forward = counted
    with_fused = _greedy(engine, prompts, 12)
    assert calls >= 11  # every pure decode step took it
    engine.runner.fused_decoder = None
    assert _greedy(engine, prompts, 12) == with_fused


def test_not_built_where_a_layer_is_not_all_kernels(kernels_ready, tiny_llama_dir: str) -> None:
    from model.engine.cpu_packing import PackedLinear
    from model.kernels.decode import FusedDecoder

    engine = _engine(tiny_llama_dir)
    model = engine.runner.model
    layer = model.layers[-1]
    original = layer.mlp.down_proj
    layer.mlp.down_proj = PackedLinear(nn.Linear(original.in_features, original.out_features, bias=False))
    assert FusedDecoder.build(model) is None
    layer.mlp.down_proj = original
    assert FusedDecoder.build(model) is not None
    layer.attn.q_norm = nn.Identity()  # q/k norms: the attention kernel does not do them
    assert FusedDecoder.build(model) is None


def test_a_step_the_attention_would_not_take_the_kernel_for_uses_the_modules(kernels_ready, tiny_llama_dir) -> None:
    engine = _engine(tiny_llama_dir)
    runner = engine.runner
    for layer in runner.model.layers:
        layer.attn.decode_paths = {1: "kernel", 2: "sdpa"}
    with torch.inference_mode():
        assert runner.fused_decoder.forward(*runner._synthetic_decode(1)) is not None
        assert runner.fused_decoder.forward(*runner._synthetic_decode(4)) is None


def test_the_choice_follows_the_timings(kernels_ready, tiny_llama_dir: str) -> None:
    from model.engine.cpu_choices import choose_fused_decoder
    from model.quant.modules import Int4Linear

    engine = _engine(tiny_llama_dir, "int4")
    model = engine.runner.model
    quant = [m for m in model.modules() if type(m) is Int4Linear]
    for m in quant:
        m.cpu_kernel = False  # as if PyTorch's kernel had won each shape alone

    def timer(fast: str):
        return lambda label, work: (work(), 1.0 if f"/{fast}/" in label else 2.0)[1]

    assert choose_fused_decoder(model, engine.runner._synthetic_decode, 4, timer=timer("modules")) is None
    assert not any(m.cpu_kernel for m in quant)
    assert choose_fused_decoder(model, engine.runner._synthetic_decode, 4, timer=timer("fused")) is not None
    assert all(m.cpu_kernel for m in quant)

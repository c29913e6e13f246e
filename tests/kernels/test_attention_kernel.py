"""The C paged decode attention (model/kernels/attention.py) against the PyTorch path it replaces, computed
on this machine: Attention.attend with the "sdpa" decode path (RoPE module, index_copy_ cache write, block
gather, masked SDPA), and SDPA per sequence on its dense K/V. Both builds run where the host allows: the
native one (AVX-512 on these hosts) and one compiled without AVX-512 (the scalar path). Then greedy output
of whole engines with the kernel forced on equals the PyTorch path forced on, under batching."""
from __future__ import annotations

import ctypes
import json
import random
import subprocess

import pytest
import torch
import torch.nn.functional as F

from model.config import RopeConfig
from model.kernels import attention as kernels
from model.kernels import build
from model.layers.attention import Attention, AttentionMetadata, PrefillSegment
from model.layers.rotary import RotaryEmbedding

BLOCK = 16
CONTEXTS = [1, 15, 16, 17, 300]


@pytest.fixture(scope="module", params=["native", "no-avx512"])
def lib(request, tmp_path_factory):
    if build.compiler() is None:
        pytest.skip("no C compiler on this host: the kernels are unavailable and PyTorch paths run")
    if not build.enabled():
        pytest.skip("GLMSERVE_KERNELS=0: kernels switched off")
    if request.param == "native":
        native = kernels.library()
        assert native is not None, "a compiler exists but csrc/attention.c did not build or load (see the log)"
        return native
    # the same source without AVX-512: its scalar path, on the same machine
    out = tmp_path_factory.mktemp("scalar") / "attention_scalar.so"
    flags = [f for f in build.CFLAGS if f != "-march=native"] + ["-march=x86-64-v2"]
    proc = subprocess.run([build.compiler(), *flags, str(build.CSRC / "attention.c"), "-o", str(out), "-lm"],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "x86-64-v2" in proc.stderr:
        pytest.skip("this compiler does not target x86-64-v2 (not an x86 host)")
    assert proc.returncode == 0, proc.stderr
    return kernels.bind(ctypes.CDLL(str(out)))


def paged_case(lens: list[int], heads: int, kv_heads: int, head_dim: int, partial: float = 1.0,
               interleaved: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A layer over a random cache with scattered (non-contiguous, shuffled) blocks; one decode per sequence."""
    gen = torch.Generator().manual_seed(seed)
    rotary = RotaryEmbedding(RopeConfig(partial_rotary_factor=partial, interleaved=interleaved), head_dim, 512)
    attn = Attention(1, heads, kv_heads, head_dim, bias=False, rotary=rotary)
    b = len(lens)
    per_seq = -(-max(lens) // BLOCK) + 1  # one padding column beyond the longest, as a longer batch leaves
    num_blocks = b * per_seq + 5
    cache = torch.randn(2, num_blocks, BLOCK, kv_heads, head_dim, generator=gen).to(dtype)
    tables = torch.randperm(num_blocks, generator=gen)[:b * per_seq].view(b, per_seq).contiguous()
    for i, n in enumerate(lens):  # padding entries beyond a context are 0, as the runner pads
        tables[i, -(-n // BLOCK):] = 0
    context_lens = torch.tensor(lens)
    positions = context_lens - 1
    slots = tables[torch.arange(b), positions // BLOCK] * BLOCK + positions % BLOCK
    meta = AttentionMetadata(slot_mapping=slots, decode_block_tables=tables, decode_context_len=max(lens),
                             decode_context_lens=context_lens)
    if b > 1:
        ar = torch.arange(per_seq * BLOCK)
        meta.decode_mask = (ar[None] < context_lens[:, None]).view(b, 1, 1, -1)
    qkv = torch.randn(b, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    return attn, cache, qkv, positions, meta


def torch_step(attn: Attention, cache: torch.Tensor, qkv, positions, meta) -> tuple[torch.Tensor, torch.Tensor]:
    attn.kv_cache, attn.decode_paths = cache.clone(), {1: "sdpa", 2: "sdpa"}
    return attn.attend(qkv, positions, meta), attn.kv_cache


def dense_reference(q: torch.Tensor, cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """SDPA per sequence on its context's K/V indexed out of the cache: (B, H, D)."""
    outs = []
    for i, n in enumerate(meta.decode_context_lens.tolist()):
        kv = cache[:, meta.decode_block_tables[i]].flatten(1, 2)[:, :n]  # (2, n, KVH, D)
        o = F.scaled_dot_product_attention(q[i][None, :, None], kv[0].transpose(0, 1)[None],
                                           kv[1].transpose(0, 1)[None], scale=scale, enable_gqa=True)
        outs.append(o[0, :, 0])
    return torch.stack(outs)


# (heads, kv_heads, head_dim, partial rotary, interleaved): GQA groups 1/3/4/8, head_dim 64/128, SmolLM2's
# 9/3/64, GLM's partial interleaved RoPE, and head_dims that are not 16-lane multiples (masked tails)
SHAPES = [(9, 3, 64, 1.0, False), (8, 2, 128, 1.0, False), (8, 1, 64, 0.5, True), (4, 4, 128, 0.5, True),
          (6, 2, 48, 1.0, False), (4, 2, 20, 0.5, True), (3, 1, 7 * 2, 1.0, False),
          # GQA groups of 7 and 6 heads: the V sums go four heads at a time, then the 3 or 2 left
          (7, 1, 80, 1.0, False), (12, 2, 64, 0.5, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}r{s[3]}{'i' if s[4] else ''}")
def test_fused_decode_equals_the_torch_step(lib, shape) -> None:
    heads, kv_heads, d, partial, interleaved = shape
    attn, cache, qkv, positions, meta = paged_case(CONTEXTS, heads, kv_heads, d, partial, interleaved)
    ref_out, ref_cache = torch_step(attn, cache, qkv, positions, meta)
    got_cache = cache.clone()
    rotary = attn.rotary
    got = kernels.fused_decode(qkv, positions, rotary.cos_cache, rotary.sin_cache, rotary.rotary_dim, interleaved,
                               meta.slot_mapping, got_cache, meta.decode_block_tables, meta.decode_context_lens,
                               heads, attn.scale, lib=lib)
    torch.testing.assert_close(got_cache, ref_cache, rtol=1e-6, atol=1e-6)  # rotated k and v in their slots
    torch.testing.assert_close(got, ref_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}")
@pytest.mark.parametrize("lens_dtype", [torch.int64, torch.int32])
def test_decode_attention_over_rotated_q_and_written_cache(lib, shape, lens_dtype) -> None:
    heads, kv_heads, d, partial, interleaved = shape
    attn, cache, qkv, positions, meta = paged_case(CONTEXTS, heads, kv_heads, d, partial, interleaved, seed=1)
    _, written = torch_step(attn, cache, qkv, positions, meta)
    q = attn.rotary.rotate(positions, qkv[:, :heads * d].unflatten(-1, (heads, d)))
    q = torch.cat([q, torch.zeros_like(q)], dim=1)[:, :heads]  # strided rows, as the split of q and k leaves
    got = kernels.decode_attention(q, written, meta.decode_block_tables, meta.decode_context_lens.to(lens_dtype),
                                   attn.scale, lib=lib)
    torch.testing.assert_close(got, dense_reference(q, written, meta, attn.scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[5]], ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}")
def test_bf16_fused_decode_rounds_where_torch_rounds_and_attends_in_fp32(lib, shape) -> None:
    """bf16 q/k/v/cache/out: the cache gets the rotated k rounded as PyTorch's RoPE rounds it; the output is
    fp32 attention over the bf16 values (q rotated and rounded), rounded once, so it sits within bf16
    rounding of an fp32 reference and close to PyTorch's own bf16 step."""
    heads, kv_heads, d, partial, interleaved = shape
    attn, cache, qkv, positions, meta = paged_case(CONTEXTS, heads, kv_heads, d, partial, interleaved, seed=4,
                                                   dtype=torch.bfloat16)
    ref_out, ref_cache = torch_step(attn, cache, qkv, positions, meta)
    got_cache = cache.clone()
    r = attn.rotary
    got = kernels.fused_decode(qkv, positions, r.cos_cache, r.sin_cache, r.rotary_dim, interleaved,
                               meta.slot_mapping, got_cache, meta.decode_block_tables, meta.decode_context_lens,
                               heads, attn.scale, lib=lib)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got_cache.float(), ref_cache.float(), rtol=1e-2, atol=1e-6)
    q = r.rotate(positions, qkv[:, :heads * d].unflatten(-1, (heads, d))).float()  # rounded to bf16 by RoPE
    exact = dense_reference(q, got_cache.float(), meta, attn.scale).flatten(1)
    torch.testing.assert_close(got.float(), exact, rtol=8e-3, atol=1e-3)
    torch.testing.assert_close(got.float(), ref_out.float(), rtol=3e-2, atol=3e-2)

    # the rotated-q entry on the written cache
    q16 = q.to(torch.bfloat16)
    got1 = kernels.decode_attention(q16, got_cache, meta.decode_block_tables, meta.decode_context_lens, attn.scale,
                                    lib=lib)
    torch.testing.assert_close(got1.float().flatten(1), exact, rtol=8e-3, atol=1e-3)


@pytest.mark.parametrize("heads,kv_heads,d", [(9, 3, 64), (8, 1, 64), (8, 2, 128)])
def test_one_sequence_at_each_context_alone(lib, heads, kv_heads, d) -> None:
    """One sequence has fewer (sequence, kv head) pairs than threads to share: long contexts are cut into
    pieces attended apart and merged (129 and 300 tokens), short ones are not."""
    for n in CONTEXTS + [129]:
        attn, cache, qkv, positions, meta = paged_case([n], heads, kv_heads, d, seed=n)
        meta.decode_mask = None
        ref_out, _ = torch_step(attn, cache, qkv, positions, meta)
        r = attn.rotary
        got = kernels.fused_decode(qkv, positions, r.cos_cache, r.sin_cache, r.rotary_dim, False, meta.slot_mapping,
                                   cache.clone(), meta.decode_block_tables, meta.decode_context_lens, heads,
                                   attn.scale, lib=lib)
        torch.testing.assert_close(got, ref_out, rtol=1e-5, atol=1e-5, msg=f"context {n}")
        q = r.rotate(positions, qkv[:, :heads * d].unflatten(-1, (heads, d)))
        _, written = torch_step(attn, cache, qkv, positions, meta)
        got1 = kernels.decode_attention(q, written, meta.decode_block_tables, meta.decode_context_lens, attn.scale,
                                        lib=lib)
        torch.testing.assert_close(got1.flatten(1), ref_out, rtol=1e-5, atol=1e-5, msg=f"context {n}")


def test_attention_layer_kernel_path_in_pure_and_mixed_steps() -> None:
    """Attention.attend with decode path "kernel": the fused call in a pure decode step, and the rotated-q
    entry for the decode rows of a step that also prefills; the same outputs and cache as "sdpa"."""
    if kernels.library() is None:
        pytest.skip("kernels unavailable on this host (no compiler or GLMSERVE_KERNELS=0)")
    attn, cache, qkv, positions, meta = paged_case([5, 40, 17], 8, 2, 64, partial=0.5, interleaved=True, seed=3)
    assert (attn.kv_cache, attn.decode_paths) == (None, None)
    attn.kv_cache = cache.clone()
    assert attn.supports_decode_kernel()
    results = {}
    for path in ("sdpa", "kernel"):
        attn.kv_cache, attn.decode_paths = cache.clone(), {1: path, 2: path}
        pure = attn.attend(qkv, positions, meta)
        # a step with a 6-token prefill of a fresh sequence (its own blocks 0.. of a new table) before the decodes
        unused = sorted(set(range(cache.shape[1])) - set(meta.decode_block_tables.flatten().tolist()))
        prefill_blocks = torch.tensor(unused[:1])
        mixed = AttentionMetadata(
            slot_mapping=torch.cat([prefill_blocks[0] * BLOCK + torch.arange(6), meta.slot_mapping + 0]),
            prefills=[PrefillSegment(0, 6, 6, prefill_blocks)], decode_start=6,
            decode_block_tables=meta.decode_block_tables, decode_context_len=meta.decode_context_len,
            decode_mask=meta.decode_mask, decode_context_lens=meta.decode_context_lens)
        attn.kv_cache = cache.clone()
        prompt = torch.randn(6, qkv.shape[1], generator=torch.Generator().manual_seed(9))
        both = attn.attend(torch.cat([prompt, qkv]), torch.cat([torch.arange(6), positions]), mixed)
        results[path] = (pure, both, attn.kv_cache)
    for got, ref in zip(results["kernel"], results["sdpa"]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_indices_out_of_range_raise_before_any_access(lib) -> None:
    attn, cache, qkv, positions, meta = paged_case([20, 3], 4, 2, 16)
    r = attn.rotary

    def call(**over):
        args = dict(qkv=qkv, positions=positions, cos=r.cos_cache, sin=r.sin_cache, rotary_dim=r.rotary_dim,
                    interleaved=False, slot_mapping=meta.slot_mapping, cache=cache.clone(),
                    block_tables=meta.decode_block_tables, context_lens=meta.decode_context_lens, heads=4,
                    scale=attn.scale, lib=lib)
        return kernels.fused_decode(**{**args, **over})

    call()
    bad_table = meta.decode_block_tables.clone()
    bad_table[0, 1] = cache.shape[1]
    with pytest.raises(IndexError, match="block id"):
        call(block_tables=bad_table)
    with pytest.raises(IndexError, match="context length"):
        call(context_lens=torch.tensor([20, 10_000]))
    with pytest.raises(IndexError, match="position"):
        call(positions=torch.tensor([19, r.cos_cache.shape[0]]))
    with pytest.raises(IndexError, match="slot"):
        call(slot_mapping=torch.tensor([0, cache.shape[1] * BLOCK]))
    with pytest.raises(ValueError, match="dtype"):
        call(cache=cache.to(torch.bfloat16))  # qkv and out stay fp32
    with pytest.raises(ValueError, match="fp32/bf16"):
        call(cache=cache.half())
    with pytest.raises(ValueError, match="groups"):
        call(heads=3)


# ---- whole engines: the kernel forced on against the PyTorch path forced on ----------------------------
@pytest.fixture(scope="module")
def tiny_glm_dir(tmp_path_factory) -> str:
    from tests.helpers.glm_replicas import build_glm4_chat_hf_replica

    return build_glm4_chat_hf_replica(tmp_path_factory.mktemp("glm") / "glm-4-9b-chat-hf")


def _greedy_tokens(path: str, decode_path: str, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    from model import EngineConfig, LLMEngine, SamplingParams

    # enforce_eager: no start-up choice and no other kernel, so only the forced decode path differs
    engine = LLMEngine.from_model(path, EngineConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                                     kv_cache_memory=8 << 20, enforce_eager=True))
    layers = [layer.attn for layer in engine.runner.model.layers]
    assert all(attn.supports_decode_kernel() for attn in layers)
    for attn in layers:
        attn.decode_paths = {1: decode_path, 2: decode_path}
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    tokens = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return [tokens[f"r{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("model", ["llama", "glm"])
def test_engine_greedy_output_with_the_kernel_equals_the_torch_path(model, tiny_llama_dir, request,
                                                                     monkeypatch) -> None:
    """Six concurrent requests (prompts of 3..70 tokens: prefill chunks of 64 tokens beside decodes, then pure
    decode steps of a shrinking batch, contexts crossing block boundaries): the same tokens either way. GLM:
    partial, interleaved RoPE and QKV bias."""
    if kernels.library() is None:
        pytest.skip("kernels unavailable on this host (no compiler or GLMSERVE_KERNELS=0)")
    path = tiny_llama_dir if model == "llama" else request.getfixturevalue("tiny_glm_dir")
    vocab = json.load(open(f"{path}/config.json"))["vocab_size"]
    rng = random.Random(7)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 70))] for _ in range(6)]
    lengths = [12, 30, 5, 21, 17, 26]
    reference = _greedy_tokens(path, "sdpa", prompts, lengths)
    calls = {"fused": 0, "attend": 0}
    for name in calls:  # counted, so the test knows both entries ran (pure decode steps and mixed ones)
        def counted(*args, _inner=getattr(kernels, name), _name=name, **kwargs):
            calls[_name] += 1
            return _inner(*args, **kwargs)
        monkeypatch.setattr(kernels, name, counted)
    assert _greedy_tokens(path, "kernel", prompts, lengths) == reference
    assert calls["fused"] > 0 and calls["attend"] > 0, calls


def test_start_up_choice_offers_the_kernel_only_where_the_layer_supports_it() -> None:
    """choose_decode_attention times "kernel" beside the PyTorch paths (each on a whole step's work, so the
    timed work runs here) for a layer that supports it, and never for one with q/k norms."""
    if kernels.library() is None:
        pytest.skip("kernels unavailable on this host (no compiler or GLMSERVE_KERNELS=0)")
    from model.engine.cpu_choices import choose_decode_attention

    def layer(qk_norm: float | None) -> Attention:
        attn = Attention(1, 8, 2, 64, bias=False, rotary=RotaryEmbedding(RopeConfig(), 64, 128),
                         qk_norm_eps=qk_norm)
        attn.kv_cache = torch.zeros(2, 4, BLOCK, 2, 64)
        return attn

    timed = []

    def timer(label: str, work) -> float:  # the kernel "measures" fastest; the work itself still runs
        work()
        kind = label.rsplit("/", 2)[1]
        timed.append(kind)
        return 0.1 if kind == "kernel" else 1.0

    assert choose_decode_attention(8, 2, 64, torch.float32, batch_rows=4, context=40, timer=timer,
                                   like=layer(None)) == {1: "kernel", 2: "kernel"}
    assert set(timed) == {"sdpa", "grouped", "kernel"}
    timed.clear()
    assert not layer(1e-6).supports_decode_kernel()
    assert "kernel" not in choose_decode_attention(8, 2, 64, torch.float32, batch_rows=4, context=40, timer=timer,
                                                   like=layer(1e-6)).values()
    assert set(timed) == {"sdpa", "grouped"}

"""CUDA checks of the MoE networks (glm4_moe, glm4_moe_lite, qwen3_moe); skipped without a GPU.

    python -m pytest -q -o addopts="" -m gpu tests/gpu/test_moe_cuda.py
"""
from __future__ import annotations

import pytest
import torch

from model import EngineConfig, LLMEngine, SamplingParams
from tests.gpu.parity import assert_cuda_logits_match_cpu
from tests.helpers.hf_parity import randomize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
            moe_intermediate_size=64, num_experts_per_tok=2)


def _tiny(tmp_path, arch: str) -> str:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "glm4_moe":
        hf = tf.Glm4MoeForCausalLM(tf.Glm4MoeConfig(**TINY, n_routed_experts=8, n_group=2, topk_group=1,
                                                    attention_bias=True, use_qk_norm=True, routed_scaling_factor=2.5))
    elif arch == "glm4_moe_lite":
        keys = {k: v for k, v in TINY.items() if k != "head_dim"}  # read as qk_rope_head_dim by this config
        hf = tf.Glm4MoeLiteForCausalLM(tf.Glm4MoeLiteConfig(
            **keys | dict(num_key_value_heads=4), n_routed_experts=8, kv_lora_rank=32, q_lora_rank=48,
            qk_rope_head_dim=16, qk_nope_head_dim=48, v_head_dim=64))
    else:
        hf = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**TINY, num_experts=8, norm_topk_prob=True))
    randomize(hf, router_std=0.2)
    hf.save_pretrained(tmp_path / arch)
    return str(tmp_path / arch)


@pytest.mark.parametrize("arch", ["glm4_moe", "glm4_moe_lite", "qwen3_moe"])
def test_cuda_moe_logits_match_cpu_fp32(tmp_path, arch: str) -> None:
    path = _tiny(tmp_path, arch)
    assert_cuda_logits_match_cpu(path)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_moe_engine_batched_greedy_equals_solo(tmp_path, dtype: str) -> None:
    path = _tiny(tmp_path, "glm4_moe")
    engine = LLMEngine.from_model(path, EngineConfig(device="cuda", dtype=dtype, max_num_seqs=8,
                                                     kv_cache_memory=64 << 20))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, 512, (n,), generator=gen).tolist() for n in (6, 30, 90)]
    params = SamplingParams(temperature=0, max_tokens=12, min_tokens=12)
    together = [o[0].token_ids for o in engine.generate(prompts, params)]
    alone = [engine.generate([p], params)[0][0].token_ids for p in prompts]
    assert [len(t) for t in together] == [12, 12, 12]
    if dtype == "float32":  # bf16 rounding differs with the batch's shape, and a near-tied expert choice with it
        assert together == alone

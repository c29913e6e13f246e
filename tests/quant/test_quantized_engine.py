"""A quantized engine is batch invariant: a request's greedy tokens alone equal its tokens in a mixed batch
with chunked prefill and preemption (the engine compared against itself, same quantization)."""
from __future__ import annotations

import random

import pytest
import torch

from model import EngineConfig, LLMEngine, SamplingParams
from model.engine.model_runner import kv_bytes_per_block
from model.quant import Int4Linear, Int8Linear


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(40, 90))] for _ in range(count)]


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_greedy_output_alone_equals_output_in_a_chunked_preempted_batch(tiny_llama_dir: str, method: str) -> None:
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    target, *others = _prompts(5, seed=11)
    alone = LLMEngine.from_model(tiny_llama_dir, EngineConfig(quantization=method, kv_cache_memory=32 << 20))
    kind = Int8Linear if method == "int8" else Int4Linear
    assert isinstance(alone.runner.model.layers[0].mlp.down_proj, kind)
    expected = alone.generate([target], params)[0][0].token_ids

    block = kv_bytes_per_block(alone.model_config, 16, torch.float32)
    # 14 blocks of 16 tokens for five ~65 + 24 token requests, 32 tokens a step: chunks, and preemption
    mixed = LLMEngine.from_model(tiny_llama_dir, EngineConfig(quantization=method, max_num_batched_tokens=32,
                                                              max_num_seqs=5, kv_cache_memory=14 * block))
    outs = mixed.generate(others[:2] + [target] + others[2:], params)
    assert mixed.scheduler.num_preemptions > 0
    assert mixed.stats().steps_total > 24 + len(target) // 32
    assert outs[2][0].token_ids == expected

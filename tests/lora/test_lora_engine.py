"""The engine side of LoRA: prefix-cache blocks never cross adapters, base requests are unchanged by
loaded adapters, --max-loras residency, and the PEFT reader's name mapping and refusals."""
from __future__ import annotations

import json

import pytest
import torch

from model import AdapterError, EngineConfig, LLMEngine, SamplingParams

GREEDY = dict(temperature=0, max_tokens=6, ignore_eos=True)
LONG_PROMPT = [1] + list(range(300, 340))  # 41 tokens: two full 16-token blocks to cache


def engine(path: str, **kw) -> LLMEngine:
    return LLMEngine.from_model(path, EngineConfig(kv_cache_memory=16 << 20, **kw))


def run(eng: LLMEngine, prompt: list[int], lora: str | None = None):
    return eng.generate([prompt], SamplingParams(**GREEDY, lora_name=lora))[0][0]


def test_prefix_cache_is_never_shared_across_adapters(tiny_llama_dir, llama_adapters):
    eng = engine(tiny_llama_dir)
    eng.load_lora("a1", llama_adapters["a1"][0])
    eng.load_lora("a2", llama_adapters["a2"][0])
    base = [run(eng, LONG_PROMPT) for _ in range(2)]
    assert base[1].num_cached_tokens > 0  # the base reuses its own blocks
    first = run(eng, LONG_PROMPT, "a1")
    assert first.num_cached_tokens == 0  # ... which a1 never sees
    again = run(eng, LONG_PROMPT, "a1")
    assert again.num_cached_tokens > 0 and again.token_ids == first.token_ids
    assert run(eng, LONG_PROMPT, "a2").num_cached_tokens == 0


def test_base_requests_are_unchanged_by_loaded_adapters(tiny_llama_dir, llama_adapters):
    eng = engine(tiny_llama_dir, enable_prefix_caching=False)
    prompts = [[1, 50, 60, 70], [1, 9000, 12], LONG_PROMPT]
    before = [o[0].token_ids for o in eng.generate(prompts, SamplingParams(**GREEDY))]
    for name, (adapter, _) in llama_adapters.items():
        eng.load_lora(name, adapter)
    after = [o[0].token_ids for o in eng.generate(prompts, SamplingParams(**GREEDY))]
    assert after == before


def test_more_adapters_than_slots_wait_and_decode_correctly(tiny_llama_dir, llama_adapters):
    """--max-loras 1 with three adapters asked at once: each step holds one adapter (plus the base)."""
    eng = engine(tiny_llama_dir, max_loras=1)
    for name, (adapter, _) in llama_adapters.items():
        eng.load_lora(name, adapter)
    prompt = [1, 77, 78, 79]
    alone = {name: run(eng, prompt, name).token_ids for name in llama_adapters}
    seen: list[int] = []
    original = eng.lora.prepare_step

    def spy(spans):
        seen.append(len({i for i, _ in spans if i}))
        original(spans)

    eng.lora.prepare_step = spy
    for i, name in enumerate(llama_adapters):
        eng.add_request(f"r{i}", prompt, SamplingParams(**GREEDY, lora_name=name))
    outs: dict[str, list[int]] = {}
    while eng.has_unfinished():
        for out in eng.step():
            outs.setdefault(out.request_id, []).extend(out.token_ids)
    assert max(seen) == 1 and len(eng.lora.resident) == 1
    assert [outs[f"r{i}"] for i in range(3)] == [alone[name] for name in llama_adapters]


def test_unknown_adapter_is_rejected_and_unload_in_use_refused(tiny_llama_dir, llama_adapters):
    from model import AdapterInUse, RequestRejected

    eng = engine(tiny_llama_dir)
    with pytest.raises(RequestRejected):
        eng.add_request("x", [1, 2, 3], SamplingParams(**GREEDY, lora_name="a1"))
    eng.load_lora("a1", llama_adapters["a1"][0])
    eng.add_request("y", [1, 2, 3], SamplingParams(**GREEDY, lora_name="a1"))
    eng.step()
    with pytest.raises(AdapterInUse):
        eng.unload_lora("a1")
    while eng.has_unfinished():
        eng.step()
    eng.unload_lora("a1")
    assert eng.loras() == []


def model_config(path: str):
    from model.config import ModelConfig

    with open(f"{path}/config.json") as f:
        return ModelConfig.from_hf_dict(json.load(f))


def _write(dir_, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    save_file(tensors, str(dir_ / "adapter_model.safetensors"))
    return str(dir_)


def test_glm_fused_query_key_value_equals_its_q_k_v_parts(tiny_glm_dir, tmp_path):
    """ChatGLM's fused query_key_value adapter and the same update as separate q/k/v adapters (shared A,
    B split by rows) fuse to the same low-rank product on qkv_proj."""
    from model.lora import read_adapter

    cfg = model_config(tiny_glm_dir)
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    torch.manual_seed(0)
    a, b = torch.randn(2, cfg.hidden_size), torch.randn(q + 2 * kv, 2)
    fused = _write(tmp_path / "fused", {"target_modules": ["query_key_value"]}, {
        "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight": a,
        "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight": b})
    parts = {"q": b[:q], "k": b[q:q + kv], "v": b[q + kv:]}
    split = _write(tmp_path / "split", {"target_modules": ["q_proj", "k_proj", "v_proj"]}, {
        **{f"base_model.model.model.layers.0.self_attn.{s}_proj.lora_A.weight": a.clone() for s in parts},
        **{f"base_model.model.model.layers.0.self_attn.{s}_proj.lora_B.weight": w for s, w in parts.items()}})
    (fa, fb), (sa, sb) = (read_adapter(d, cfg, 8).weights[(0, "attn.qkv_proj")] for d in (fused, split))
    torch.testing.assert_close(fb @ fa, sb @ sa)
    torch.testing.assert_close(fb @ fa, b @ a * 2.0)  # scaling alpha / r = 4 / 2


@pytest.mark.parametrize("config, tensors, words", [
    ({"target_modules": ["lm_head"]}, {}, "output head"),
    ({"target_modules": ["q_proj"], "use_dora": True}, {}, "DoRA"),
    ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, {}, "modules_to_save"),
    ({"target_modules": ["embed_tokens"]}, {"base_model.model.model.embed_tokens.lora_A.weight": torch.zeros(2, 8)},
     "token embedding"),
    ({"target_modules": ["q_proj"], "r": 128}, {}, "above --max-lora-rank"),
])
def test_refused_adapters_say_why(tiny_llama_dir, tmp_path, config, tensors, words):
    from model.lora import read_adapter

    cfg = model_config(tiny_llama_dir)
    with pytest.raises(AdapterError, match=words):
        read_adapter(_write(tmp_path / "bad", config, tensors), cfg, 64)


def test_unpacked_lora_path_decodes_the_same(tiny_llama_dir, llama_adapters):
    """enforce_eager turns oneDNN packing off for the base and the adapters: same greedy tokens."""
    prompt = [1, 640, 641, 642]
    outs = []
    for eager in (False, True):
        eng = engine(tiny_llama_dir, enforce_eager=eager)
        eng.load_lora("a2", llama_adapters["a2"][0])
        outs.append(run(eng, prompt, "a2").token_ids)
    assert outs[0] == outs[1]

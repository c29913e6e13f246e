"""Our network, loaded from checkpoints that `transformers` wrote, gives HF's logits (fp32, 1e-4)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import UnsupportedModelError, load_model
from tests.helpers.glm_replicas import chatglm_state_dict

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _hf_model(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        cfg = tf.LlamaConfig(**TINY, rms_norm_eps=1e-5)
        return tf.LlamaForCausalLM(cfg)
    if arch == "llama3-scaled":
        cfg = tf.LlamaConfig(**TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
        return tf.LlamaForCausalLM(cfg)
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**TINY, sliding_window=None))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY, tie_word_embeddings=False))
    if arch == "glm":
        return tf.GlmForCausalLM(tf.GlmConfig(**TINY, head_dim=16, attention_bias=True, pad_token_id=0, eos_token_id=1))
    if arch == "glm4":
        return tf.Glm4ForCausalLM(tf.Glm4Config(**TINY, head_dim=16, attention_bias=True, pad_token_id=0, eos_token_id=1))
    raise ValueError(arch)


def _randomize(model: torch.nn.Module) -> None:
    # HF initializes norms to 1 and biases to 0, which would hide mistakes in those tensors
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)


def _compare(hf, path: str) -> float:
    ours = load_model(path).model
    ids = torch.randint(0, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours(ids))
    return (ref - got).abs().max().item()


@pytest.mark.parametrize("arch", ["llama", "llama3-scaled", "mistral", "qwen2", "glm", "glm4"])
def test_logits_equal_transformers(arch: str, tmp_path: Path) -> None:
    hf = _hf_model(arch).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path)
    assert _compare(hf, str(tmp_path)) < 1e-4


def test_sharded_safetensors_and_bin_checkpoints_load(tmp_path: Path) -> None:
    hf = _hf_model("qwen2").eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert _compare(hf, str(tmp_path / "sharded")) < 1e-4
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(hf.config.to_json_string())
    assert _compare(hf, str(tmp_path / "bin")) < 1e-4


def test_legacy_chatglm_layout_matches_hf_glm(tmp_path: Path) -> None:
    """ChatGLM2/3 remote-code checkpoints (fused query_key_value, dense_h_to_4h) are the same network as
    HF `glm`; rewrite an HF glm checkpoint in that layout and expect HF glm's logits."""
    hf = _hf_model("glm").eval()
    _randomize(hf)
    out = chatglm_state_dict(hf)
    save_file(out, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "padded_vocab_size": TINY["vocab_size"], "hidden_size": 64, "ffn_hidden_size": 128,
        "num_layers": 2, "num_attention_heads": 4, "multi_query_attention": True, "multi_query_group_num": 2,
        "kv_channels": 16, "layernorm_epsilon": hf.config.rms_norm_eps, "add_qkv_bias": True, "seq_length": 256}))
    assert _compare(hf, str(tmp_path)) < 1e-4


@pytest.mark.parametrize("patch, named", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"model_type": "mixtral", "num_local_experts": 8}, "mixtral"),
    ({"num_experts": 8}, "num_experts"),
    ({"model_type": "mistral", "sliding_window": 128}, "sliding_window"),
])
def test_unsupported_features_are_refused_by_name(patch: dict, named: str, tmp_path: Path) -> None:
    hf = _hf_model("llama")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters", None) if "rope_scaling" in patch else None
    cfg.update(patch)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=named):
        load_model(str(tmp_path))

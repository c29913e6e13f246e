"""Mixture-of-experts checkpoints (GLM-4.5 `glm4_moe`, GLM-4.7-Flash `glm4_moe_lite` with multi-latent
attention, `qwen3_moe`) written by transformers: our network
gives transformers' logits (fp32, 1e-4), the serving engine's greedy output equals transformers'
`generate`, our export is what transformers reads, and GLM-4.5's MTP layers are skipped at load."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import load_model
from model.config import ModelConfig
from model.models import build_model
from tests.helpers.hf_parity import engine_greedy, export_roundtrip, hf_greedy, max_logit_diff, randomize

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
GLM = dict(moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
           first_k_dense_replace=1, attention_bias=True, norm_topk_prob=True)
MLA = dict(moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, kv_lora_rank=16, qk_rope_head_dim=8,
           qk_nope_head_dim=24, v_head_dim=32, num_key_value_heads=4)

# each a routing feature transformers defines and we must match
CONFIGS = {
    # GLM-4.5/4.6 style: group-limited choice, q/k norms, scaled weights
    "glm4_moe-grouped": ("glm4_moe", {**GLM, "n_group": 2, "topk_group": 1, "use_qk_norm": True,
                                      "routed_scaling_factor": 2.5}),
    # GLM-4.5-Air style: one group, 4 of 8 experts
    "glm4_moe-air": ("glm4_moe", {**GLM, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}),
    # unnormalized weights, two shared experts, no dense layer
    "glm4_moe-unnormed": ("glm4_moe", {**GLM, "norm_topk_prob": False, "n_shared_experts": 2,
                                       "first_k_dense_replace": 0}),
    # GLM-4.7-Flash style: multi-latent attention (q through a low-rank bottleneck), interleaved rotary pairs
    "glm4_moe_lite": ("glm4_moe_lite", {**MLA, "q_lora_rank": 24, "n_group": 2, "topk_group": 1,
                                        "routed_scaling_factor": 1.8, "attention_bias": True}),
    # no q bottleneck, half-split rotary, every layer sparse
    "glm4_moe_lite-plain-q": ("glm4_moe_lite", {**MLA, "q_lora_rank": None, "rope_interleave": False,
                                                "mlp_layer_types": ["sparse"] * 3}),
    "qwen3_moe": ("qwen3_moe", dict(moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                    norm_topk_prob=True, mlp_only_layers=[0])),
    "qwen3_moe-sparse-step": ("qwen3_moe", dict(moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
                                                norm_topk_prob=False, decoder_sparse_step=2)),
}


def _hf_class(arch: str):
    import transformers as tf

    return {"glm4_moe": tf.Glm4MoeForCausalLM, "glm4_moe_lite": tf.Glm4MoeLiteForCausalLM,
            "qwen3_moe": tf.Qwen3MoeForCausalLM}[arch]


def _hf_model(name: str):
    import transformers as tf

    arch, extra = CONFIGS[name]
    config_class = {"glm4_moe": tf.Glm4MoeConfig, "glm4_moe_lite": tf.Glm4MoeLiteConfig,
                    "qwen3_moe": tf.Qwen3MoeConfig}[arch]
    torch.manual_seed(0)
    keys = {**TINY, **extra}
    if arch == "glm4_moe_lite":
        keys.pop("head_dim")  # Glm4MoeLiteConfig reads head_dim as qk_rope_head_dim
    hf = _hf_class(arch)(config_class(**keys, pad_token_id=0, eos_token_id=1)).eval()
    randomize(hf, router_std=0.2)
    return hf


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple]:
    """name -> (transformers model, its save_pretrained dir), built once for the module."""
    out = {}
    for name in CONFIGS:
        hf = _hf_model(name)
        path = tmp_path_factory.mktemp(name)
        hf.save_pretrained(path)
        out[name] = (hf, str(path))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_transformers(name: str, checkpoints) -> None:
    hf, path = checkpoints[name]
    assert max_logit_diff(hf, path) < 1e-4


def test_config_places_dense_and_sparse_layers_as_transformers_does(checkpoints) -> None:
    for name in CONFIGS:
        hf, path = checkpoints[name]
        cfg = ModelConfig.from_hf_dict(json.loads((Path(path) / "config.json").read_text()))
        hf_sparse = tuple(i for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "experts"))
        assert cfg.moe.layers == hf_sparse, name


@pytest.mark.parametrize("name", ["glm4_moe-grouped", "glm4_moe_lite", "qwen3_moe"])
def test_engine_greedy_equals_transformers_generate(name: str, checkpoints) -> None:
    hf, path = checkpoints[name]
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 256, (n,), generator=gen).tolist() for n in (5, 19, 45)]  # 45: chunked prefill
    got = engine_greedy(path, prompts, 8)
    assert got == [hf_greedy(hf, p, 8) for p in prompts]


@pytest.mark.parametrize("name", ["glm4_moe-grouped", "glm4_moe_lite", "qwen3_moe-sparse-step"])
def test_export_is_read_by_transformers_unchanged(name: str, checkpoints, tmp_path: Path) -> None:
    hf, path = checkpoints[name]
    assert export_roundtrip(path, tmp_path / "export", _hf_class(CONFIGS[name][0])) < 1e-5


def _add_mtp_layer(path: Path, num_nextn_predict_layers: int) -> None:
    """GLM-4.5 checkpoints append one multi-token-prediction layer after the last decoder layer: a copy of
    a decoder layer's tensors plus eh_proj, enorm, hnorm and shared_head (transformers does not build it)."""
    tensors = load_file(str(path / "model.safetensors"))
    n = TINY["num_hidden_layers"]
    last = f"model.layers.{n - 1}."
    mtp = {f"model.layers.{n}." + k[len(last):]: v.clone() for k, v in tensors.items() if k.startswith(last)}
    h = TINY["hidden_size"]
    mtp.update({f"model.layers.{n}.eh_proj.weight": torch.randn(h, 2 * h),
                f"model.layers.{n}.enorm.weight": torch.ones(h), f"model.layers.{n}.hnorm.weight": torch.ones(h),
                f"model.layers.{n}.shared_head.norm.weight": torch.ones(h)})
    save_file(mtp, str(path / "model-mtp.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_nextn_predict_layers"] = num_nextn_predict_layers
    (path / "config.json").write_text(json.dumps(cfg))


def test_mtp_layer_weights_are_skipped_with_a_log_line(checkpoints, tmp_path: Path, caplog) -> None:
    hf, _ = checkpoints["glm4_moe-air"]
    hf.save_pretrained(tmp_path)
    _add_mtp_layer(tmp_path, num_nextn_predict_layers=1)
    with caplog.at_level(logging.INFO, logger="glmserve.loader"):
        assert max_logit_diff(hf, str(tmp_path)) < 1e-4
    assert any("multi-token-prediction layer 3" in r.getMessage() for r in caplog.records)


def test_extra_layers_without_mtp_in_the_config_are_an_error(checkpoints, tmp_path: Path) -> None:
    hf, _ = checkpoints["glm4_moe-air"]
    hf.save_pretrained(tmp_path)
    _add_mtp_layer(tmp_path, num_nextn_predict_layers=0)
    with pytest.raises(KeyError, match="model.layers.3"):
        load_model(str(tmp_path))


def test_router_stays_fp32_when_the_network_runs_in_bf16(checkpoints) -> None:
    _, path = checkpoints["glm4_moe-grouped"]
    cfg = ModelConfig.from_hf_dict(json.loads((Path(path) / "config.json").read_text()))
    model = build_model(cfg).to(torch.bfloat16)
    moe = model.layers[1].mlp
    assert moe.gate.weight.dtype == torch.float32 and moe.gate.e_score_correction_bias.dtype == torch.float32
    assert moe.experts[0].gate_up_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = model.compute_logits(model(torch.randint(0, 256, (1, 8))))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_moe_families_we_do_not_run_are_refused_by_name() -> None:
    from model import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="qwen2_moe"):
        ModelConfig.from_hf_dict({**TINY, "model_type": "qwen2_moe", "num_experts": 8})
    # DeepSeek-V3-style MLA with narrower values than keys: the expanded KV cache holds one head size
    with pytest.raises(UnsupportedModelError, match="v_head_dim"):
        ModelConfig.from_hf_dict({**TINY, **MLA, "model_type": "glm4_moe_lite", "v_head_dim": 16})

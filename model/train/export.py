"""Writes a trained network as an HF checkpoint directory that transformers, vLLM and glmserve load.

    OUT/config.json              HF config (GLM: GlmForCausalLM with rope_parameters, partial rotary)
    OUT/model.safetensors        the base architecture's tensor names (LoRA merged, fused tensors split)
    OUT/tokenizer.json ...       tokenizer files with the chat template
    OUT/generation_config.json   eos/stop ids
    OUT/training_args.json       provenance: task, data hash, steps, final eval loss, the whole config
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from model.config import ModelConfig
from model.models.decoder import CausalLM
from model.models.registry import build_model, weight_map_for
from model.train.config import LoraConfig
from model.train.lora import apply_lora, merge_lora
from model.train.tokenizer_train import save_tokenizer


def hf_glm_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for transformers' `glm` architecture (GLM-4-9b layout)."""
    if cfg.model_type != "glm":
        raise ValueError(f"hf_glm_config writes model_type 'glm', not {cfg.model_type!r}")
    rope = {"rope_type": "default", "rope_theta": cfg.rope.theta,
            "partial_rotary_factor": cfg.rope.partial_rotary_factor}
    eos = list(cfg.eos_token_ids)
    return {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope,
        # transformers 4.x reads these two at the top level; 5.x reads rope_parameters
        "rope_theta": cfg.rope.theta,
        "partial_rotary_factor": cfg.rope.partial_rotary_factor,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": cfg.pad_token_id,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def materialize(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], lora: LoraConfig | None) -> CausalLM:
    """A CPU CausalLM holding `state_dict` (our names, LoRA tensors included), adapters merged."""
    model = build_model(cfg, device="cpu", dtype=torch.float32, init_weights=False)
    if lora is not None and lora.enabled:
        apply_lora(model, lora)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the network: missing {missing[:4]}, unexpected {unexpected[:4]}")
    merge_lora(model)
    return model.eval()


def export_adapter(out_dir: str, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], lora: LoraConfig,
                   base_path: str, training_args: dict[str, Any]) -> str:
    """Writes only the LoRA matrices, in PEFT's layout under the base architecture's module names
    (model/lora/peft_format.py), plus training_args.json (the server shows it as the adapter's provenance)."""
    from model.lora.peft_format import write_adapter

    weights = {}
    for name, a in state_dict.items():
        if not name.endswith(".lora_A"):
            continue
        module = name[:-len(".lora_A")]  # layers.{i}.attn.qkv_proj
        _, layer, owner, proj = module.split(".")
        weights[(int(layer), f"{owner}.{proj}")] = (a, state_dict[module + ".lora_B"])
    if not weights:
        raise ValueError("the state dict holds no LoRA matrices (train with --lora-rank > 0)")
    write_adapter(out_dir, cfg, weights, lora.rank, lora.alpha, base_path)
    _write_json(os.path.join(out_dir, "training_args.json"), training_args)
    return out_dir


def export_checkpoint(out_dir: str, model: CausalLM, hf_tokenizer, training_args: dict[str, Any],
                      base_dir: str | None = None, stop_ids: list[int] | None = None) -> str:
    """Writes the checkpoint files into out_dir. With base_dir (fine-tuning), config.json and
    generation_config.json are the base model's; otherwise they are written for HF `glm`."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg: ModelConfig = model.config
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weight_map_for(cfg).export(model).items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if base_dir is not None:
        hf_config = _read_json(os.path.join(base_dir, "config.json"))
        hf_config.update({"dtype": "float32", "torch_dtype": "float32"})
        generation = _read_json(os.path.join(base_dir, "generation_config.json")) or {}
    else:
        hf_config = hf_glm_config(cfg)
        generation = {}
    if stop_ids:
        generation["eos_token_id"] = list(stop_ids)
    generation.setdefault("bos_token_id", cfg.bos_token_id)
    generation.setdefault("pad_token_id", cfg.pad_token_id)
    _write_json(os.path.join(out_dir, "config.json"), hf_config)
    _write_json(os.path.join(out_dir, "generation_config.json"), generation)
    save_tokenizer(hf_tokenizer, out_dir)
    _write_json(os.path.join(out_dir, "training_args.json"), training_args)
    return out_dir


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)

"""The PEFT adapter layout (adapter_config.json + adapter_model.safetensors), read and written.

PEFT names a LoRA tensor after the HF module it adapts, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (A: (r, in), B: (out, r)). Our network
fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; an adapter on the parts becomes one on the
fused projection exactly: A stacked (sum of ranks, in) and B block-diagonal (out, sum of ranks), so each
row block of the output gets only its own part's B_s A_s x. GLM's own fused names (`query_key_value`,
HF GLM's `gate_up_proj`, ChatGLM's `dense_h_to_4h`) map onto ours directly.

Refused targets, and why: `embed_tokens` / `lm_head` / `word_embeddings` / `output_layer` (an adapter on
the vocabulary would need a per-row embedding and head; not served), MoE experts and routers (per-expert
adapters are not batched), `modules_to_save` (full weight copies, not low-rank), DoRA (magnitude vectors
need the base weight norm per adapter), `bias` other than "none" (trained biases change the base).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import torch

from model.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# HF module name (after the layer prefix) -> (our module, shard of it or None)
_HF_MODULES = {
    "self_attn.q_proj": ("attn.qkv_proj", "q"), "self_attn.k_proj": ("attn.qkv_proj", "k"),
    "self_attn.v_proj": ("attn.qkv_proj", "v"), "self_attn.o_proj": ("attn.o_proj", None),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"), "mlp.up_proj": ("mlp.gate_up_proj", "up"),
    "mlp.gate_up_proj": ("mlp.gate_up_proj", None), "mlp.down_proj": ("mlp.down_proj", None),
    # ChatGLM2/3 and glm-4-9b-chat (remote-code layout)
    "self_attention.query_key_value": ("attn.qkv_proj", None), "self_attention.dense": ("attn.o_proj", None),
    "mlp.dense_h_to_4h": ("mlp.gate_up_proj", None), "mlp.dense_4h_to_h": ("mlp.down_proj", None),
}
_REFUSED = {
    "embed_tokens": "an adapter on the token embedding is not served (only decoder projections are)",
    "word_embeddings": "an adapter on the token embedding is not served (only decoder projections are)",
    "lm_head": "an adapter on the output head is not served (only decoder projections are)",
    "output_layer": "an adapter on the output head is not served (only decoder projections are)",
    "experts": "MoE expert adapters are not batched",
    "shared_experts": "MoE expert adapters are not batched",
    "gate": "the MoE router is not adapted",
}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.layers|transformer\.encoder\.layers)\.(\d+)\.(.+)\."
                  r"lora_([AB])(?:\.[^.]+)?\.weight$")
MODULES = ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


class AdapterError(ValueError):
    """A LoRA adapter directory that cannot be served on this base; the message says why."""


@dataclass
class AdapterWeights:
    """One adapter in our coordinates: per (layer, our module) A (R, in) and B (out, R) with the scaling
    folded into B, R the (possibly stacked) rank."""

    rank: int  # PEFT's r
    alpha: float
    scaling: float
    target_modules: list[str]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.weights.values())


def read_adapter(path: str, cfg: ModelConfig, max_rank: int) -> AdapterWeights:
    """Reads and validates a PEFT LoRA directory against the base `cfg`; raises AdapterError."""
    from safetensors.torch import load_file

    config = _read_config(path)
    rank, alpha = int(config.get("r", 0)), float(config.get("lora_alpha", config.get("r", 0)))
    if rank < 1:
        raise AdapterError(f"{CONFIG_FILE}: r must be a positive integer, got {config.get('r')!r}")
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} is above --max-lora-rank {max_rank}")
    for key, why in (("use_dora", "DoRA adapters are not served"),
                     ("rank_pattern", "per-module ranks (rank_pattern) are not served"),
                     ("alpha_pattern", "per-module alphas (alpha_pattern) are not served"),
                     ("modules_to_save", "modules_to_save holds full weights, not low-rank ones")):
        if config.get(key):
            raise AdapterError(f"{CONFIG_FILE}: {key} is set: {why}")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{CONFIG_FILE}: bias={config['bias']!r}: trained biases are not served")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    for target in targets:
        if target.split(".")[-1] in _REFUSED:
            raise AdapterError(f"target module {target!r} is refused: {_REFUSED[target.split('.')[-1]]}")
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise AdapterError(f"{weights_path} is missing (only the safetensors PEFT layout is read)")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # noqa: BLE001 - a corrupt file is the adapter's fault
        raise AdapterError(f"{weights_path} is not a readable safetensors file: {e}") from e
    out = AdapterWeights(rank, alpha, scaling, targets, config=config)
    out.weights = _fuse(_parts(tensors, cfg, rank), cfg, scaling)
    if not out.weights:
        raise AdapterError(f"{weights_path} holds no LoRA tensor for a decoder projection")
    return out


def _read_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise AdapterError(f"adapter directory {path!r} does not exist")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise AdapterError(f"{config_path} is missing")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} must hold a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{CONFIG_FILE}: peft_type {config.get('peft_type')!r} is not LORA")
    return config


def _parts(tensors: dict[str, torch.Tensor], cfg: ModelConfig, rank: int) -> dict[tuple[int, str, str | None], dict]:
    """(layer, our module, shard) -> {"A": tensor, "B": tensor}, names and shapes checked."""
    parts: dict[tuple[int, str, str | None], dict] = {}
    for name, tensor in tensors.items():
        m = _KEY.match(name)
        if m is None:
            leaf = name.split(".lora_")[0].split(".")[-1]
            why = _REFUSED.get(leaf, "not a LoRA A/B tensor of a decoder projection")
            raise AdapterError(f"adapter tensor {name!r} is refused: {why}")
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        if module not in _HF_MODULES:
            leaf = module.split(".")[-1]
            raise AdapterError(f"adapter tensor {name!r} is refused: "
                               f"{_REFUSED.get(leaf, f'{module!r} is not a projection glmserve adapts')}")
        if layer >= cfg.num_hidden_layers:
            raise AdapterError(f"adapter tensor {name!r}: the base has {cfg.num_hidden_layers} layers")
        if cfg.is_moe_layer(layer) and module.startswith("mlp."):
            raise AdapterError(f"adapter tensor {name!r} is refused: layer {layer} is a MoE layer "
                               "(expert adapters are not batched)")
        ours, shard = _HF_MODULES[module]
        if tensor.dim() != 2 or (which == "A" and tensor.shape[0] != rank) or (which == "B" and tensor.shape[1] != rank):
            raise AdapterError(f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, not rank {rank}")
        parts.setdefault((layer, ours, shard), {})[which] = tensor.float()
    for (layer, ours, shard), ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"layer {layer} {ours}{':' + shard if shard else ''}: lora_A and lora_B must both "
                               "be present")
        want_in, want_out = _io(cfg, ours, shard)
        if ab["A"].shape[1] != want_in or ab["B"].shape[0] != want_out:
            raise AdapterError(
                f"layer {layer} {ours}{':' + shard if shard else ''}: adapter shapes A {tuple(ab['A'].shape)}, "
                f"B {tuple(ab['B'].shape)} do not fit the base (in {want_in}, out {want_out}): "
                "was it trained on another base model?")
    return parts


def _io(cfg: ModelConfig, module: str, shard: str | None) -> tuple[int, int]:
    """(in_features, out_features) of our module, or of one shard's rows of it."""
    q, kv, i = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    full = {"attn.qkv_proj": (cfg.hidden_size, q + 2 * kv), "attn.o_proj": (q, cfg.hidden_size),
            "mlp.gate_up_proj": (cfg.hidden_size, 2 * i), "mlp.down_proj": (i, cfg.hidden_size)}[module]
    rows = {None: full[1], "q": q, "k": kv, "v": kv, "gate": i, "up": i}[shard]
    return full[0], rows


def _spans(cfg: ModelConfig, module: str) -> dict[str, tuple[int, int]]:
    q, kv, i = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    if module == "attn.qkv_proj":
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
    return {"gate": (0, i), "up": (i, 2 * i)}


def _fuse(parts: dict, cfg: ModelConfig, scaling: float) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """Shards of one fused module become one (A stacked, B block-diagonal) pair; B carries the scaling."""
    grouped: dict[tuple[int, str], dict[str | None, dict]] = {}
    for (layer, module, shard), ab in parts.items():
        grouped.setdefault((layer, module), {})[shard] = ab
    out = {}
    for (layer, module), shards in grouped.items():
        if None in shards:
            if len(shards) > 1:
                raise AdapterError(f"layer {layer} {module}: both fused and split LoRA tensors are present")
            a, b = shards[None]["A"], shards[None]["B"]
        else:
            spans = _spans(cfg, module)
            names = [s for s in spans if s in shards]  # fixed order: q, k, v / gate, up
            a = torch.cat([shards[s]["A"] for s in names])  # (sum r, in)
            b = torch.zeros(_io(cfg, module, None)[1], a.shape[0])  # (out, sum r)
            col = 0
            for s in names:
                lo, hi = spans[s]
                r = shards[s]["A"].shape[0]
                b[lo:hi, col:col + r] = shards[s]["B"]
                col += r
        out[(layer, module)] = (a.contiguous(), (b * scaling).contiguous())
    return out


def write_adapter(path: str, cfg: ModelConfig, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
                  rank: int, alpha: float, base_model_name_or_path: str, extra: dict | None = None) -> str:
    """Writes our fused-module adapter (A, B unscaled) in PEFT's layout under the base architecture's
    module names: a fused module of a split family (Llama q/k/v, gate/up) becomes one part per shard,
    each with the shared A and its rows of B (exact)."""
    from safetensors.torch import save_file

    split = cfg.model_type not in ("chatglm",)
    prefix = "base_model.model.transformer.encoder.layers" if not split else "base_model.model.model.layers"
    hf_names = _hf_names(cfg)
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for (layer, module), (a, b) in weights.items():
        for hf, shard in hf_names[module]:
            lo, hi = _spans(cfg, module)[shard] if shard else (0, b.shape[0])
            tensors[f"{prefix}.{layer}.{hf}.lora_A.weight"] = a.detach().float().contiguous().clone()
            tensors[f"{prefix}.{layer}.{hf}.lora_B.weight"] = b[lo:hi].detach().float().contiguous().clone()
            targets.add(hf.split(".")[-1])
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
              "bias": "none", "target_modules": sorted(targets), "base_model_name_or_path": base_model_name_or_path,
              "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "init_lora_weights": True, **(extra or {})}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def _hf_names(cfg: ModelConfig) -> dict[str, list[tuple[str, str | None]]]:
    """Our module -> the base architecture's module name(s) for it, each with its shard."""
    if cfg.model_type == "chatglm":
        return {"attn.qkv_proj": [("self_attention.query_key_value", None)], "attn.o_proj": [("self_attention.dense", None)],
                "mlp.gate_up_proj": [("mlp.dense_h_to_4h", None)], "mlp.down_proj": [("mlp.dense_4h_to_h", None)]}
    gate_up = ([("mlp.gate_up_proj", None)] if cfg.model_type in ("glm", "glm4")
               else [("mlp.gate_proj", "gate"), ("mlp.up_proj", "up")])
    return {"attn.qkv_proj": [("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v")],
            "attn.o_proj": [("self_attn.o_proj", None)], "mlp.gate_up_proj": gate_up,
            "mlp.down_proj": [("mlp.down_proj", None)]}

"""model_type -> the network and the weight names of its checkpoints."""
from __future__ import annotations

import torch

from model.config import ModelConfig
from model.models.decoder import CausalLM
from model.models.glm import CHATGLM_WEIGHTS, GLM4_MOE_LITE_WEIGHTS, GLM4_MOE_WEIGHTS, GLM_WEIGHTS
from model.models.llama import LLAMA_WEIGHTS
from model.models.qwen3 import QWEN3_MOE_WEIGHTS, QWEN3_WEIGHTS
from model.models.weight_map import WeightMap

_WEIGHT_MAPS: dict[str, WeightMap] = {
    "llama": LLAMA_WEIGHTS, "mistral": LLAMA_WEIGHTS, "qwen2": LLAMA_WEIGHTS,
    "smollm": LLAMA_WEIGHTS, "smollm2": LLAMA_WEIGHTS,
    "qwen3": QWEN3_WEIGHTS, "qwen3_moe": QWEN3_MOE_WEIGHTS,
    "glm": GLM_WEIGHTS, "glm4": GLM_WEIGHTS, "chatglm": CHATGLM_WEIGHTS, "glm4_moe": GLM4_MOE_WEIGHTS,
    "glm4_moe_lite": GLM4_MOE_LITE_WEIGHTS,
}


def weight_map_for(cfg: ModelConfig) -> WeightMap:
    return _WEIGHT_MAPS[cfg.model_type]


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                init_weights: bool = True) -> CausalLM:
    """A network for `cfg`. With init_weights=False it is built on the meta device and materialized
    empty (the loader fills it), which skips the cost of random initialization."""
    if init_weights:
        with torch.device(device):
            model = CausalLM(cfg)
        model = model.to(dtype)
        model.reset_rotary(device)  # RoPE tables stay fp32 whatever the weights' dtype
        return model
    with torch.device("meta"):
        model = CausalLM(cfg)
    if str(device) == "meta":  # the caller materializes each parameter itself (model/quant: QuantizingLoad)
        return model.to(dtype)
    model = model.to(dtype).to_empty(device=device)  # in dtype from the start: no float32 copy first
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.reset_rotary(device)
    return model

"""Qwen3 checkpoints: the Llama layout plus a per-head RMSNorm on q and k (`q_norm`, `k_norm`) and, when
attention_bias is set, a bias on o_proj too; Qwen3-MoE adds routed experts without shared ones."""
from model.models.llama import LLAMA_RULES
from model.models.moe import ROUTED_EXPERT_RULES
from model.models.weight_map import Rule, WeightMap

_L = "model.layers.{i}."
_T = "layers.{i}."

QK_NORM_RULES = [
    Rule(f"{_L}self_attn.q_norm.weight", f"{_T}attn.q_norm.weight"),
    Rule(f"{_L}self_attn.k_norm.weight", f"{_T}attn.k_norm.weight"),
]

QWEN3_RULES = LLAMA_RULES + QK_NORM_RULES + [Rule(f"{_L}self_attn.o_proj.bias", f"{_T}attn.o_proj.bias")]

QWEN3_WEIGHTS = WeightMap(QWEN3_RULES, ignored=[r"rotary_emb\.inv_freq$"])
QWEN3_MOE_WEIGHTS = WeightMap(QWEN3_RULES + ROUTED_EXPERT_RULES, ignored=[r"rotary_emb\.inv_freq$"])

"""Checkpoint names of the sparse-MoE tensors Qwen3-MoE and GLM-4.5 share (per-expert gate/up/down,
the router `mlp.gate`), and GLM-4.5's shared experts."""
from model.models.weight_map import Rule

_L = "model.layers.{i}.mlp."
_T = "layers.{i}.mlp."

ROUTED_EXPERT_RULES = [
    Rule(f"{_L}gate.weight", f"{_T}gate.weight"),
    Rule(f"{_L}experts.{{e}}.gate_proj.weight", f"{_T}experts.{{e}}.gate_up_proj.weight", "gate"),
    Rule(f"{_L}experts.{{e}}.up_proj.weight", f"{_T}experts.{{e}}.gate_up_proj.weight", "up"),
    Rule(f"{_L}experts.{{e}}.down_proj.weight", f"{_T}experts.{{e}}.down_proj.weight"),
]

SHARED_EXPERT_RULES = [
    Rule(f"{_L}gate.e_score_correction_bias", f"{_T}gate.e_score_correction_bias"),
    Rule(f"{_L}shared_experts.gate_proj.weight", f"{_T}shared_experts.gate_up_proj.weight", "gate"),
    Rule(f"{_L}shared_experts.up_proj.weight", f"{_T}shared_experts.gate_up_proj.weight", "up"),
    Rule(f"{_L}shared_experts.down_proj.weight", f"{_T}shared_experts.down_proj.weight"),
]

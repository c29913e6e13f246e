"""Llama-family checkpoints (Llama, Mistral, Qwen2, SmolLM): separate q/k/v and gate/up tensors."""
from model.models.weight_map import Rule, WeightMap

_L = "model.layers.{i}."
_T = "layers.{i}."

# the tensors every HF decoder of this family names the same way (GLM's HF port included)
HF_DECODER_RULES = [
    Rule("model.embed_tokens.weight", "embed_tokens.weight"),
    *[Rule(f"{_L}self_attn.{s}_proj.{p}", f"{_T}attn.qkv_proj.{p}", s) for s in "qkv" for p in ("weight", "bias")],
    Rule(f"{_L}self_attn.o_proj.weight", f"{_T}attn.o_proj.weight"),
    Rule(f"{_L}mlp.down_proj.weight", f"{_T}mlp.down_proj.weight"),
    Rule(f"{_L}input_layernorm.weight", f"{_T}input_norm.weight"),
    Rule(f"{_L}post_attention_layernorm.weight", f"{_T}post_attn_norm.weight"),
    Rule("model.norm.weight", "norm.weight"),
    Rule("lm_head.weight", "lm_head.weight"),
]

LLAMA_RULES = HF_DECODER_RULES + [
    Rule(f"{_L}mlp.gate_proj.weight", f"{_T}mlp.gate_up_proj.weight", "gate"),
    Rule(f"{_L}mlp.up_proj.weight", f"{_T}mlp.gate_up_proj.weight", "up"),
]

LLAMA_WEIGHTS = WeightMap(LLAMA_RULES, ignored=[r"rotary_emb\.inv_freq$"])

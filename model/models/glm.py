"""GLM checkpoints: HF `glm` (GLM-4-9b layout: fused gate_up_proj, QKV bias, partial interleaved
rotary), HF `glm4` (adds sandwich norms around attention and MLP), HF `glm4_moe` (GLM-4.5/4.6/4.7:
the Llama layout with dense first layers, then routed + shared experts, optional q/k norms), and the
legacy ChatGLM2/3 remote-code layout (`transformer.encoder.layers`, fused `query_key_value`, `dense_h_to_4h`)."""
from model.models.llama import HF_DECODER_RULES, LLAMA_RULES
from model.models.moe import ROUTED_EXPERT_RULES, SHARED_EXPERT_RULES
from model.models.qwen3 import QK_NORM_RULES
from model.models.weight_map import Rule, WeightMap

_L = "model.layers.{i}."
_T = "layers.{i}."

GLM_RULES = HF_DECODER_RULES + [
    Rule(f"{_L}mlp.gate_up_proj.weight", f"{_T}mlp.gate_up_proj.weight"),
    Rule(f"{_L}post_self_attn_layernorm.weight", f"{_T}post_self_attn_norm.weight"),
    Rule(f"{_L}post_mlp_layernorm.weight", f"{_T}post_mlp_norm.weight"),
]

_C = "transformer.encoder.layers.{i}."
CHATGLM_RULES = [
    Rule("transformer.embedding.word_embeddings.weight", "embed_tokens.weight"),
    Rule(f"{_C}input_layernorm.weight", f"{_T}input_norm.weight"),
    Rule(f"{_C}self_attention.query_key_value.weight", f"{_T}attn.qkv_proj.weight"),
    Rule(f"{_C}self_attention.query_key_value.bias", f"{_T}attn.qkv_proj.bias"),
    Rule(f"{_C}self_attention.dense.weight", f"{_T}attn.o_proj.weight"),
    Rule(f"{_C}post_attention_layernorm.weight", f"{_T}post_attn_norm.weight"),
    Rule(f"{_C}mlp.dense_h_to_4h.weight", f"{_T}mlp.gate_up_proj.weight"),
    Rule(f"{_C}mlp.dense_4h_to_h.weight", f"{_T}mlp.down_proj.weight"),
    Rule("transformer.encoder.final_layernorm.weight", "norm.weight"),
    Rule("transformer.output_layer.weight", "lm_head.weight"),
]

GLM4_MOE_RULES = LLAMA_RULES + QK_NORM_RULES + ROUTED_EXPERT_RULES + SHARED_EXPERT_RULES

GLM_WEIGHTS = WeightMap(GLM_RULES, ignored=[r"rotary_emb\.inv_freq$"])
GLM4_MOE_WEIGHTS = WeightMap(GLM4_MOE_RULES, ignored=[r"rotary_emb\.inv_freq$"])
CHATGLM_WEIGHTS = WeightMap(CHATGLM_RULES, ignored=[r"rotary_pos_emb\.inv_freq$"])

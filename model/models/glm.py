"""GLM checkpoints: HF `glm` (GLM-4-9b layout: fused gate_up_proj, QKV bias, partial interleaved
rotary), HF `glm4` (adds sandwich norms around attention and MLP), HF `glm4_moe` (GLM-4.5/4.6/4.7:
the Llama layout with dense first layers, then routed + shared experts, optional q/k norms), HF
`glm4_moe_lite` (GLM-4.7-Flash: the same MLP with multi-latent attention), and the
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

_A = "model.layers.{i}.self_attn."
_TA = "layers.{i}.attn."
# GLM-4.7-Flash (glm4_moe_lite): multi-latent attention; listed first, so its q_proj is not read as a q/k/v shard
MLA_RULES = [
    Rule(f"{_A}q_proj.weight", f"{_TA}q_proj.weight"),
    Rule(f"{_A}q_a_proj.weight", f"{_TA}q_a_proj.weight"),
    Rule(f"{_A}q_a_proj.bias", f"{_TA}q_a_proj.bias"),
    Rule(f"{_A}q_a_layernorm.weight", f"{_TA}q_a_norm.weight"),
    Rule(f"{_A}q_b_proj.weight", f"{_TA}q_b_proj.weight"),
    Rule(f"{_A}kv_a_proj_with_mqa.weight", f"{_TA}kv_a_proj.weight"),
    Rule(f"{_A}kv_a_proj_with_mqa.bias", f"{_TA}kv_a_proj.bias"),
    Rule(f"{_A}kv_a_layernorm.weight", f"{_TA}kv_a_norm.weight"),
    Rule(f"{_A}kv_b_proj.weight", f"{_TA}kv_b_proj.weight"),
    Rule(f"{_A}o_proj.bias", f"{_TA}o_proj.bias"),
]
GLM4_MOE_LITE_RULES = MLA_RULES + LLAMA_RULES + ROUTED_EXPERT_RULES + SHARED_EXPERT_RULES

GLM_WEIGHTS = WeightMap(GLM_RULES, ignored=[r"rotary_emb\.inv_freq$"])
GLM4_MOE_LITE_WEIGHTS = WeightMap(GLM4_MOE_LITE_RULES, ignored=[r"rotary_emb\.inv_freq$"])
GLM4_MOE_WEIGHTS = WeightMap(GLM4_MOE_RULES, ignored=[r"rotary_emb\.inv_freq$"])
CHATGLM_WEIGHTS = WeightMap(CHATGLM_RULES, ignored=[r"rotary_pos_emb\.inv_freq$"])

"""Model and engine configuration.

`ModelConfig` is the one description of a network that every part of glmserve reads. It is built from
an HF `config.json` dict (`from_hf_dict`), from GGUF metadata (in `loader.py`), or from a training
preset (`PRESETS`). Anything the network cannot run is refused here, by name.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    """The checkpoint uses a feature glmserve does not implement."""


# model_type -> family. "llama" covers every plain pre-norm Llama-style network.
LLAMA_TYPES = {"llama", "mistral", "qwen2", "smollm", "smollm2", "qwen3", "qwen3_moe"}
GLM_TYPES = {"glm", "glm4", "chatglm", "glm4_moe", "glm4_moe_lite"}
# GLM-4.5 keeps GLM's partial rotary but rotates the two halves like Llama, not adjacent pairs
INTERLEAVED_ROPE_TYPES = {"glm", "glm4", "chatglm"}
# q/k RMSNorm over each head before RoPE (GLM-4.5 only when its config says use_qk_norm)
QK_NORM_TYPES = {"qwen3", "qwen3_moe"}
MOE_TYPES = {"qwen3_moe", "glm4_moe", "glm4_moe_lite"}
SUPPORTED_ROPE_TYPES = {"default", "linear", "llama3"}


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    # GLM rotates adjacent pairs (x0, x1), (x2, x3)...; Llama rotates the two halves of the head.
    interleaved: bool = False
    scaling_type: str = "default"
    scaling_factor: float = 1.0
    # llama3 scaling parameters
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class MoeConfig:
    """A sparse MLP: a router picks `num_experts_per_tok` of `num_experts` gated-SiLU experts per token.

    Qwen3-MoE: softmax scores, plain top-k. GLM-4.5: sigmoid scores, a learned per-expert bias that only
    steers the choice (`score_correction_bias`), the choice limited to the `topk_groups` best of
    `num_groups` expert groups, weights scaled by `routed_scaling_factor`, plus always-on shared experts."""

    num_experts: int
    num_experts_per_tok: int
    intermediate_size: int  # of one expert
    layers: tuple[int, ...]  # decoder layers whose MLP is sparse; the others are dense
    scoring: str = "softmax"  # "softmax" or "sigmoid"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    num_groups: int = 1
    topk_groups: int = 1
    score_correction_bias: bool = False
    num_shared_experts: int = 0  # one dense MLP of num_shared_experts * intermediate_size

    def __post_init__(self) -> None:
        if self.scoring not in ("softmax", "sigmoid"):
            raise UnsupportedModelError(f"MoE router scoring {self.scoring!r} is not supported")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError("num_experts_per_tok must be in [1, num_experts]")
        if self.num_groups < 1 or self.num_experts % self.num_groups or not 0 < self.topk_groups <= self.num_groups:
            raise ValueError("n_group must divide the experts and topk_group must be in [1, n_group]")
        per_group = self.num_experts // self.num_groups
        if self.num_groups > 1 and (per_group < 2 or self.num_experts_per_tok > self.topk_groups * per_group):
            # a group is scored by its two best experts, and the chosen groups must hold top-k experts
            raise ValueError("group-limited routing needs >= 2 experts per group and top-k within the chosen groups")


@dataclass(frozen=True)
class MlaConfig:
    """Multi-latent attention (GLM-4.7-Flash `glm4_moe_lite`, DeepSeek-V2/3 style): q through an optional
    low-rank bottleneck, K/V expanded per head from one `kv_lora_rank` latent plus a shared rotary key.
    We cache the expanded K and V, so a head's value width must equal its key width."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        if self.v_head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
            raise UnsupportedModelError(
                f"multi-latent attention with v_head_dim={self.v_head_dim} != qk_nope_head_dim + qk_rope_head_dim="
                f"{self.qk_nope_head_dim + self.qk_rope_head_dim} is not supported (the KV cache holds one head size)")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    attention_bias: bool = False  # bias on q, k, v projections (Qwen2, GLM)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    # GLM-4 (`glm4`) wraps attention and MLP outputs in an extra RMSNorm each ("sandwich" norms).
    post_sublayer_norms: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    qk_norm: bool = False  # RMSNorm of each q and k head before RoPE (Qwen3, GLM-4.5 use_qk_norm)
    attention_output_bias: bool = False  # Qwen3's attention_bias also puts a bias on o_proj
    moe: MoeConfig | None = None
    # GLM-4.5 checkpoints hold this many multi-token-prediction layers after the last decoder layer
    # (model.layers.{num_hidden_layers}...); the loader skips their tensors
    num_mtp_layers: int = 0
    mla: MlaConfig | None = None  # then head_dim is the q/k head width and every query head has its own K/V

    def __post_init__(self) -> None:
        if self.model_type not in LLAMA_TYPES | GLM_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; supported: {sorted(LLAMA_TYPES | GLM_TYPES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.rope.scaling_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_scaling type {self.rope.scaling_type!r} is not supported; supported: {sorted(SUPPORTED_ROPE_TYPES)}"
            )
        if self.hidden_act not in ("silu", "swiglu"):
            raise UnsupportedModelError(f"hidden_act {self.hidden_act!r} is not supported (only silu/SwiGLU)")

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.moe is not None and layer_idx in self.moe.layers

    def num_params(self, active: bool = False) -> int:
        """Weights in the network; with active=True only those one token uses (top-k experts of each MoE layer)."""
        h, n = self.hidden_size, self.num_hidden_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h + 2 * h
        if self.mla is not None:
            a = self.mla
            heads, rank = self.num_attention_heads, a.kv_lora_rank
            q_params = h * q if a.q_lora_rank is None else a.q_lora_rank * (h + q + 1)
            attn = (q_params + h * (rank + a.qk_rope_head_dim) + rank
                    + rank * heads * (a.qk_nope_head_dim + a.v_head_dim) + heads * a.v_head_dim * h + 2 * h)
        dense = 3 * h * self.intermediate_size
        total = n * (attn + dense)
        if self.moe is not None:
            m = self.moe
            experts = m.num_experts_per_tok if active else m.num_experts
            sparse = 3 * h * m.intermediate_size * (experts + m.num_shared_experts) + m.num_experts * h
            total += len(m.layers) * (sparse - dense)
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return total + embed + h

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Build from a `config.json` dict (transformers 4.x or 5.x spelling, or legacy ChatGLM)."""
        model_type = cfg.get("model_type", "")
        if model_type == "chatglm":
            return _from_chatglm_dict(cfg)
        if model_type == "glm4_moe_lite":
            cfg = _mla_as_expanded_heads(cfg)
        if model_type not in LLAMA_TYPES | GLM_TYPES:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported; supported: {sorted(LLAMA_TYPES | GLM_TYPES)}")
        _refuse_unsupported(cfg)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        is_glm = model_type in GLM_TYPES
        rope_params = dict(cfg.get("rope_parameters") or {})
        legacy_scaling = cfg.get("rope_scaling") or {}
        partial = rope_params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5 if is_glm else 1.0))
        interleaved = model_type in INTERLEAVED_ROPE_TYPES or (
            model_type == "glm4_moe_lite" and bool(cfg.get("rope_interleave", True)))
        rope = _rope_from(rope_params or legacy_scaling, cfg.get("rope_theta", 10000.0), partial, interleaved)
        attention_bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope=rope,
            attention_bias=attention_bias,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            post_sublayer_norms=model_type == "glm4",
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_ids(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
            hidden_act=cfg.get("hidden_act", "silu"),
            qk_norm=model_type in QK_NORM_TYPES or bool(cfg.get("use_qk_norm", False)),
            attention_output_bias=attention_bias and model_type in QK_NORM_TYPES,
            moe=_moe_from(cfg) if model_type in MOE_TYPES else None,
            num_mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0) if model_type in MOE_TYPES else 0,
            mla=_mla_from(cfg) if model_type == "glm4_moe_lite" else None,
        )


def _mla_from(cfg: dict[str, Any]) -> MlaConfig:
    return MlaConfig(q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=cfg["kv_lora_rank"],
                     qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"],
                     v_head_dim=cfg["v_head_dim"])


def _mla_as_expanded_heads(cfg: dict[str, Any]) -> dict[str, Any]:
    """GLM-4.7-Flash's config in the terms of our decoder: one K/V head per query head of the q/k width,
    the rotary part of each head rotated (interleaved pairs when rope_interleave)."""
    rope_dim, head_dim = cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    rope_params = dict(cfg.get("rope_parameters") or {})
    rope_params["partial_rotary_factor"] = rope_dim / head_dim
    return {**cfg, "head_dim": head_dim, "num_key_value_heads": cfg["num_attention_heads"],
            "rope_parameters": rope_params, "partial_rotary_factor": rope_dim / head_dim}


def _moe_from(cfg: dict[str, Any]) -> MoeConfig:
    """The sparse-MLP description in Qwen3-MoE's or GLM-4.5's config.json spelling."""
    n = cfg["num_hidden_layers"]
    # the hub's configs say num_experts (Qwen) / n_routed_experts (GLM); transformers 5 may write num_local_experts
    num_experts = cfg.get("num_experts") or cfg.get("n_routed_experts") or cfg.get("num_local_experts")
    if cfg["model_type"] in ("glm4_moe", "glm4_moe_lite"):
        # layers [0, first_k_dense_replace) are dense, the rest sparse; GLM-4.7-Flash may list them instead
        first_sparse = cfg.get("first_k_dense_replace", 1)
        layers = (tuple(i for i, t in enumerate(cfg["mlp_layer_types"]) if t == "sparse") if cfg.get("mlp_layer_types")
                  else tuple(range(first_sparse, n)))
        return MoeConfig(
            num_experts=num_experts, num_experts_per_tok=cfg["num_experts_per_tok"],
            intermediate_size=cfg["moe_intermediate_size"], layers=layers,
            scoring="sigmoid", norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
            num_groups=cfg.get("n_group") or 1, topk_groups=cfg.get("topk_group") or 1,
            score_correction_bias=True, num_shared_experts=cfg.get("n_shared_experts", 1))
    # qwen3_moe: every decoder_sparse_step-th layer is sparse unless listed in mlp_only_layers
    step, dense_only = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
    layers = tuple(i for i in range(n) if i not in dense_only and (i + 1) % step == 0)
    return MoeConfig(
        num_experts=num_experts, num_experts_per_tok=cfg["num_experts_per_tok"],
        intermediate_size=cfg["moe_intermediate_size"], layers=layers, scoring="softmax",
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)))


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


# Qwen configs carry a sliding_window size even when use_sliding_window is off
_QWEN_TYPES = {"qwen2", "qwen3", "qwen3_moe"}


def _refuse_unsupported(cfg: dict[str, Any]) -> None:
    model_type = cfg.get("model_type")
    if cfg.get("sliding_window") and cfg.get("use_sliding_window", True) and model_type not in _QWEN_TYPES:
        raise UnsupportedModelError(f"sliding_window={cfg['sliding_window']} attention is not supported")
    if model_type in _QWEN_TYPES and cfg.get("use_sliding_window"):
        raise UnsupportedModelError(f"sliding_window={cfg.get('sliding_window')} attention is not supported")
    if any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise UnsupportedModelError("sliding_window attention is not supported (layer_types has sliding layers)")
    if model_type not in MOE_TYPES:
        for moe_key in ("num_local_experts", "num_experts", "n_routed_experts"):
            if cfg.get(moe_key):
                raise UnsupportedModelError(f"mixture-of-experts ({moe_key}={cfg[moe_key]}) is not supported "
                                            f"for model_type {model_type!r}; supported MoE types: {sorted(MOE_TYPES)}")


def _rope_from(params: dict[str, Any], theta: float, partial: float, interleaved: bool) -> RopeConfig:
    scaling_type = params.get("rope_type") or params.get("type") or "default"
    return RopeConfig(
        theta=float(params.get("rope_theta", theta)),
        partial_rotary_factor=float(partial),
        interleaved=interleaved,
        scaling_type=scaling_type,
        scaling_factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _from_chatglm_dict(cfg: dict[str, Any]) -> ModelConfig:
    """Legacy ChatGLM2/3 and GLM-4-9b-chat remote-code layout (`transformer.encoder.layers...`)."""
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention", True) else heads
    theta = 10000.0 * float(cfg.get("rope_ratio", 1.0))
    return ModelConfig(
        model_type="chatglm",
        vocab_size=cfg.get("padded_vocab_size") or cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        rope=RopeConfig(theta=theta, partial_rotary_factor=0.5, interleaved=True),
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        tie_word_embeddings=False,
        max_position_embeddings=cfg.get("seq_length", 8192),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_as_ids(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"),
    )


# Training presets: GLM-architecture networks built from scratch (`glmserve train pretrain --preset`).
PRESETS: dict[str, dict[str, Any]] = {
    "glm-tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512),
    "glm-small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=1024),
    "glm-base": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                     num_key_value_heads=4, max_position_embeddings=2048),
}


# what --model-override may change in a preset: its shape and the GLM architecture switches; the
# vocabulary and special token ids always come from the tokenizer
PRESET_OVERRIDES = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings", "head_dim", "rms_norm_eps", "attention_bias",
                    "tie_word_embeddings", "rope_theta", "partial_rotary_factor"}


def check_preset_overrides(overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - PRESET_OVERRIDES)
    if unknown:
        raise ValueError(f"cannot override {unknown} in a preset; allowed: {sorted(PRESET_OVERRIDES)}")


def preset_config(name: str, vocab_size: int, eos_token_ids: tuple[int, ...] = (), pad_token_id: int | None = None,
                  bos_token_id: int | None = None, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    check_preset_overrides(overrides)
    p = {**PRESETS[name], **overrides}
    rope = RopeConfig(theta=float(p.pop("rope_theta", 10000.0)),
                      partial_rotary_factor=float(p.pop("partial_rotary_factor", 0.5)), interleaved=True)
    p.setdefault("head_dim", p["hidden_size"] // p["num_attention_heads"])
    p.setdefault("rms_norm_eps", 1e-5)
    p.setdefault("attention_bias", True)
    return ModelConfig(model_type="glm", vocab_size=vocab_size, rope=rope, eos_token_ids=tuple(eos_token_ids),
                       pad_token_id=pad_token_id, bos_token_id=bos_token_id, **p)


QUANTIZATIONS = ("none", "int8", "int4", "auto")
QUANT_GROUP_SIZES = (32, 64, 128)  # int4 inputs per scale: serving, training and model/quant check against this


def knob(default: Any, help: str, *, size: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """A config field that is also a serve flag: `help` is its help text, `size` parses 512MiB-style
    values, `aliases` are older flag spellings still accepted."""
    return field(default=default, metadata={"help": help, "size": size, "aliases": aliases})


@dataclass
class EngineConfig:
    """How the model worker runs: batch budgets, KV cache size, device and dtype.

    Each field is also a `glmserve serve --flag` and a GLMSERVE_<FIELD> variable, derived from this class
    (server/settings.py); its `help` metadata is the flag's help text."""

    max_num_seqs: int = knob(32, "sequences decoded together")
    max_num_batched_tokens: int = knob(512, "tokens per engine step (prefill chunks and decodes together)")
    # a chat's prompt beside a long prompt mid-prefill (a summarize/translate chunk) used to wait a whole
    # step behind it: the running prefill took the budget before any waiting prompt was considered
    interleave_prefills: bool = knob(True, "running prefills leave up to half of a step's tokens to waiting prompts "
                                           "that can start now")
    block_size: int = knob(16, "tokens per KV cache block (a power of two)")
    kv_cache_memory: int | None = knob(None, "KV cache size, e.g. 512MiB or 2GiB (default: kv_cache_fraction of "
                                             "free memory)", size=True)
    kv_cache_fraction: float = knob(0.5, "share of free memory the KV cache takes when kv_cache_memory is unset")
    max_model_len: int | None = knob(None, "context length served, prompt + output (default: the model's)")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = knob("auto", "auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16")
    enforce_eager: bool = knob(False, "no CUDA graphs / compiled decode")
    # exact: the same tokens as the full product (model/engine/greedy_screen.py)
    greedy_screen: bool = knob(True, "greedy rows find their token from an int8 copy of an fp32/bf16 lm_head and the "
                                     "exact rows of the few tokens that can win (CPU; same tokens, fewer bytes)")
    enable_prefix_caching: bool = knob(True, "reuse the KV blocks of prompts seen before")
    num_threads: int | None = knob(None, "torch threads for the engine; 1 is faster when other processes share "
                                         "the cores")
    adapt_threads: bool = knob(True, "without --num-threads, re-time the thread count every ~10 s of stepping "
                                     "and keep the fastest (a neighbour holding a core makes fewer threads faster)")
    # n-gram speculative decoding (greedy and unseeded sampled requests): up to this many tokens proposed
    # per step from an earlier occurrence of the sequence's last tokens (prompt lookup); 0 = off
    num_speculative_tokens: int = knob(0, "n-gram speculative decoding: tokens proposed per step (0: off; 4 is a "
                                          "good start on CPU)", aliases=("--speculative-tokens",))
    # ... only while at most this many sequences decode: a bigger batch is compute-bound and the extra rows
    # cost what they save (CPU, k = 4: alone +54%, 4 at once +8%, 8 +-0, 32 -3%)
    speculative_max_batch: int = knob(4, "draft only while at most this many sequences decode")

    # weight-only quantization (model/quant): int8 per output channel, int4 in groups along the input;
    # auto = a GGUF file's Q4_0/Q4_1/Q8_0 tensors served as stored, any other checkpoint unquantized
    quantization: str = knob("none", "none | int8 | int4 | auto (a GGUF's Q4_0/Q4_1/Q8_0 served as stored)")
    quantization_group_size: int = knob(32, "int4 group size along the input: 32 | 64 | 128 (a layer whose "
                                            "input width it does not divide takes the next smaller)")

    # LoRA adapters (model/lora): adapters resident on the device at once (the running sequences use at
    # most this many; more registered ones wait on the host, least recently used evicted), and the largest r
    max_loras: int = knob(4, "LoRA adapters resident at once (and used by one step at most); more wait, LRU")
    max_lora_rank: int = knob(64, "largest LoRA rank r an adapter may have")

    # a checkpoint's tokenizer that exists only as its own Python (auto_map) and that glmserve does not
    # implement is refused unless this is set; then transformers runs that code (docs/SECURITY.md)
    trust_remote_code: bool = knob(False, "run a checkpoint's own tokenizer code when glmserve has no built-in "
                                          "equivalent (arbitrary Python from the model dir; docs/SECURITY.md)")

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError("max_model_len must be >= 16")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        if self.speculative_max_batch < 0:
            raise ValueError("speculative_max_batch must be >= 0")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if not 0 <= self.num_speculative_tokens <= 16:
            raise ValueError("num_speculative_tokens must be in [0, 16]")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be positive")
        if not 0 < self.kv_cache_fraction <= 1:
            raise ValueError("kv_cache_fraction must be in (0, 1]")
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be >= 1")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
        if self.quantization_group_size not in QUANT_GROUP_SIZES:
            raise ValueError("quantization_group_size must be 32, 64 or 128")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, float32, bfloat16, float16")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        return names[self.dtype]


def default_cache_dir() -> str:
    return os.environ.get("GLMSERVE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "glmserve")

"""Tiny bases and random LoRA adapters made by PEFT itself (the reference implementation), each with the
checkpoint PEFT's merge_and_unload writes: serving base + adapter must decode like that merged copy.

    base = build_tiny_glm(tmp / "glm")
    adapter_dir, merged_dir = make_peft_adapter(base, tmp / "a1", seed=1, rank=4)
"""
from __future__ import annotations

from pathlib import Path

from tests.helpers.checkpoints import copy_tokenizer, default_tokenizer_dir

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")


def build_tiny_glm(dest: str | Path, seed: int = 0) -> str:
    """An HF `glm` (GLM-4-9b layout: QKV bias, partial rotary, fused gate_up_proj) random model with the
    default model's tokenizer."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    dest = Path(dest)
    if (dest / "complete").exists():
        return str(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = GlmConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True,
                    partial_rotary_factor=0.5, max_position_embeddings=1024, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = GlmForCausalLM(cfg).eval()
    with torch.no_grad():  # HF starts biases at 0, which would hide a misplaced bias
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(dest)
    copy_tokenizer(dest, default_tokenizer_dir())
    (dest / "complete").write_text("ok\n")
    return str(dest)


def make_peft_adapter(base_dir: str, dest: str | Path, seed: int, rank: int = 4, alpha: float = 8.0,
                      targets: tuple[str, ...] | None = None, scale: float = 1.0) -> tuple[str, str]:
    """PEFT wraps the HF base with a random (non-zero B) LoRA; returns (adapter dir, merged checkpoint dir)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    adapter_dir, merged_dir = dest / "adapter", dest / "merged"
    if (dest / "complete").exists():
        return str(adapter_dir), str(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if targets is None:
        targets = GLM_TARGETS if model.config.model_type in ("glm", "glm4") else LLAMA_TARGETS
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                                  init_lora_weights=False, lora_dropout=0.0))
    with torch.no_grad():  # large enough that every adapter changes the greedy tokens
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    peft_model.save_pretrained(adapter_dir)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    copy_tokenizer(merged_dir, default_tokenizer_dir())
    (dest / "complete").write_text("ok\n")
    return str(adapter_dir), str(merged_dir)

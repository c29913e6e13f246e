"""Tiny random checkpoints written with `transformers` (the independent reference format).

    from tests.helpers.checkpoints import build_tiny_llama
    path = build_tiny_llama(tmp_dir)        # config.json + model.safetensors + the default model's tokenizer

The tokenizer (and its chat template) is copied from the default model, so prompts encode exactly as
they do for `--model default`; the weights are random, so generated text is noise.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def default_tokenizer_dir() -> str:
    from model import resolve_model_dir

    return resolve_model_dir("default")


def copy_tokenizer(dest: str | Path, source_dir: str | None = None) -> None:
    source_dir = source_dir or default_tokenizer_dir()
    for name in TOKENIZER_FILES:
        src = os.path.join(source_dir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(dest, name))


def build_tiny_llama(dest: str | Path, *, hidden_size: int = 64, num_hidden_layers: int = 2,
                     num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                     max_position_embeddings: int = 1024, seed: int = 0) -> str:
    """A Llama-architecture random model with the default model's tokenizer; returns the directory.

    Reuses an existing build in `dest` (a `complete` marker file is written last)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    if (dest / "complete").exists():
        return str(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok_dir = default_tokenizer_dir()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    copy_tokenizer(dest, tok_dir)
    (dest / "complete").write_text("ok\n")
    return str(dest)

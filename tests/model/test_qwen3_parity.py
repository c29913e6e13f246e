"""Qwen3 checkpoints written by transformers (per-head q/k RMSNorm before RoPE; attention_bias also on
o_proj): our logits equal transformers' (fp32, 1e-4), the engine's greedy output equals `generate`, and
our export is what transformers reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import UnsupportedModelError, load_model
from tests.helpers.hf_parity import engine_greedy, export_roundtrip, hf_greedy, max_logit_diff, randomize

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, eos_token_id=1)
VARIANTS = {
    "qwen3": dict(),  # Qwen3-8B layout: no biases, untied head
    "qwen3-tied-bias": dict(tie_word_embeddings=True, attention_bias=True),  # Qwen3-0.6B ties; bias everywhere
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple]:
    import transformers as tf

    out = {}
    for name, extra in VARIANTS.items():
        torch.manual_seed(0)
        hf = tf.Qwen3ForCausalLM(tf.Qwen3Config(**TINY, **extra)).eval()
        randomize(hf)
        path = tmp_path_factory.mktemp(name)
        hf.save_pretrained(path)
        out[name] = (hf, str(path))
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_equal_transformers(name: str, checkpoints) -> None:
    hf, path = checkpoints[name]
    assert max_logit_diff(hf, path) < 1e-4


def test_engine_greedy_equals_transformers_generate(checkpoints) -> None:
    hf, path = checkpoints["qwen3"]
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(2, 256, (n,), generator=gen).tolist() for n in (4, 23, 45)]
    assert engine_greedy(path, prompts, 8) == [hf_greedy(hf, p, 8) for p in prompts]


def test_export_is_read_by_transformers_unchanged(checkpoints, tmp_path: Path) -> None:
    import transformers as tf

    _, path = checkpoints["qwen3-tied-bias"]
    assert export_roundtrip(path, tmp_path / "export", tf.Qwen3ForCausalLM) < 1e-5


def test_sliding_window_qwen3_is_refused_by_name(checkpoints, tmp_path: Path) -> None:
    _, path = checkpoints["qwen3"]
    cfg = json.loads((Path(path) / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=64)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        load_model(str(tmp_path))

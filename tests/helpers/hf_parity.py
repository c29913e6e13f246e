"""Checks of our network against transformers on checkpoints transformers wrote.

    from tests.helpers.hf_parity import randomize, max_logit_diff, hf_greedy, engine_greedy, export_roundtrip

    hf = SomeForCausalLM(tiny_config).eval(); randomize(hf); hf.save_pretrained(d)
    assert max_logit_diff(hf, d) < 1e-4                       # fp32 logits on random ids
    assert engine_greedy(d, prompts, 12) == [hf_greedy(hf, p, 12) for p in prompts]
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def randomize(model: torch.nn.Module, router_std: float = 0.5) -> None:
    """HF initializes norms to 1, biases and the MoE score-correction bias to 0 and the router near 0,
    which would hide mistakes in those tensors; this moves them off their defaults. A wide router keeps
    the expert choice of every token far from a tie, so no test depends on float rounding order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, router_std)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.1)


def max_logit_diff(hf: torch.nn.Module, path: str, vocab_size: int = 256) -> float:
    from model import load_model

    ours = load_model(path).model
    ids = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours(ids))
    return (ref - got).abs().max().item()


def hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def engine_greedy(path: str, prompts: list[list[int]], n: int, max_num_batched_tokens: int = 32) -> list[list[int]]:
    """All prompts at once through the serving engine (paged KV, continuous batching; a small token
    budget so long prompts prefill in chunks next to other sequences' decodes)."""
    from model import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine.from_model(path, EngineConfig(max_num_seqs=8, max_num_batched_tokens=max_num_batched_tokens,
                                                     kv_cache_memory=8 << 20, block_size=8))
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    return [o[0].token_ids for o in outs]


def export_roundtrip(path: str, dest: Path, hf_class: type) -> float:
    """Our weights written back under the checkpoint's names (weight_map.export), read by transformers:
    max logit difference to the original checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from model import load_model
    from model.models import weight_map_for

    loaded = load_model(path)
    tensors = {k: v.contiguous() for k, v in weight_map_for(loaded.config).export(loaded.model).items()}
    wanted = set()
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            wanted |= set(st.keys())
    assert set(tensors) == wanted, f"export names differ: {sorted(set(tensors) ^ wanted)[:6]}"
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(json.loads((Path(path) / "config.json").read_text())))
    original = hf_class.from_pretrained(path, dtype=torch.float32).eval()
    exported = hf_class.from_pretrained(str(dest), dtype=torch.float32).eval()
    ids = torch.randint(0, loaded.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (original(ids).logits - exported(ids).logits).abs().max().item()

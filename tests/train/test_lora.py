"""LoRA: starts as the base model, trains only adapters, merges into the same function."""
from __future__ import annotations

import torch

from model.config import preset_config
from model.models.registry import build_model
from model.train.config import LoraConfig
from model.train.lora import LoRALinear, apply_lora, count_parameters, merge_lora


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(preset_config("glm-tiny", 97, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                     intermediate_size=96))


def _logits(model, ids):
    with torch.no_grad():
        return model.compute_logits(model(ids))


def test_fresh_adapters_leave_the_output_unchanged() -> None:
    model, ids = _model(), torch.randint(0, 97, (2, 12))
    before = _logits(model, ids)
    assert apply_lora(model, LoraConfig(rank=4)) == 2 * 4  # 4 projections per layer
    torch.testing.assert_close(_logits(model, ids), before, rtol=0, atol=0)


def test_only_adapters_are_trainable() -> None:
    model = _model()
    apply_lora(model, LoraConfig(rank=4, targets=("qkv_proj", "o_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    n_trainable, n_total = count_parameters(model)
    assert 0 < n_trainable < n_total / 10


def test_merge_equals_adapted_forward_and_restores_plain_linears() -> None:
    model, ids = _model(), torch.randint(0, 97, (2, 12))
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # move B off zero, as training would
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)
    adapted = _logits(model, ids)
    assert merge_lora(model) == 8
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(dict(model.named_parameters())) == set(dict(_model().named_parameters()))
    torch.testing.assert_close(_logits(model, ids), adapted, rtol=1e-5, atol=1e-5)


def test_a_training_step_moves_adapters_and_not_the_base() -> None:
    model = _model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, LoraConfig(rank=4))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 97, (2, 12))
    for _ in range(2):  # B starts at zero, so A only gets a gradient from the second step on
        model.loss(ids, ids).backward()
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        plain = name.replace(".base.", ".")
        if plain in base:
            assert torch.equal(p, base[plain]), name
        else:
            assert p.abs().sum() > 0, name

"""The learning-rate schedule against transformers' own schedulers, and AdamW's parameter groups."""
from __future__ import annotations

import pytest
import torch

from model.train.config import OptimConfig
from model.train.schedule import build_optimizer, build_scheduler, lr_factor


def _lrs(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_matches_transformers(schedule: str) -> None:
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    total, warmup = 50, 7
    reference = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}[schedule]
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt_ref = torch.optim.AdamW([p1], lr=1e-3)
    opt_ours = torch.optim.AdamW([p2], lr=1e-3)
    ref = _lrs(reference(opt_ref, warmup, total), opt_ref, total)
    ours = _lrs(build_scheduler(opt_ours, OptimConfig(lr=1e-3, warmup_steps=warmup, schedule=schedule), total),
                opt_ours, total)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_warmup_ratio_and_floor() -> None:
    cfg = OptimConfig(lr=1.0, warmup_ratio=0.1, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, 100) for s in range(100)]
    assert factors[:11] == pytest.approx([s / 10 for s in range(10)] + [1.0])  # 10 warmup steps
    assert min(factors[10:]) >= 0.1 - 1e-12  # decays to the floor, never below
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    from model.config import preset_config
    from model.models.registry import build_model

    model = build_model(preset_config("glm-tiny", 64, num_hidden_layers=1))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "layers.0.attn.qkv_proj.weight" in names and "lm_head.weight" in names
    assert not any(n.endswith("bias") or "norm" in n or "embed" in n for n in names)


def test_invalid_optim_config_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="step")
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0)

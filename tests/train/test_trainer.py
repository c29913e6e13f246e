"""The loop's invariants: accumulation, checkpointing and autocast change how a step is computed, not
what it computes; the loss is the token-weighted mean over the whole global batch."""
from __future__ import annotations

import json

import pytest
import torch

from model.config import preset_config
from model.models.registry import build_model
from model.train.data import IGNORE_INDEX, TokenDataset
from model.train.distributed import DistInfo
from model.train.trainer import Trainer
from tests.train.recipes import TINY_GLM, train_config

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _dataset(ragged: bool) -> TokenDataset:
    g = torch.Generator().manual_seed(0)
    seqs, labels = [], []
    for i in range(24):
        n = 6 + (i * 7) % 20 if ragged else 24
        x = torch.randint(0, 64, (n,), generator=g)
        y = x.clone()
        y[: n // 2] = IGNORE_INDEX  # SFT-like: only the second half is a target
        seqs.append(x.tolist())
        labels.append(y.tolist())
    return TokenDataset(seqs, labels, pad_id=0)


def _curve(tmp_path, name: str, ragged: bool = True, **kw) -> tuple[list[float], torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(preset_config("glm-tiny", 64, **TINY_GLM))
    cfg = train_config(tmp_path / name, max_steps=4, **kw)
    Trainer(model, _dataset(ragged), None, cfg, SINGLE, {}).train()
    with open(tmp_path / name / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    return losses, model.lm_head.weight.detach().clone()


def test_accumulation_equals_a_bigger_batch_with_ragged_targets(tmp_path) -> None:
    big, w_big = _curve(tmp_path, "big", batch_size=4, grad_accum=1)
    acc, w_acc = _curve(tmp_path, "acc", batch_size=1, grad_accum=4)
    assert acc == pytest.approx(big, rel=1e-5)
    torch.testing.assert_close(w_acc, w_big, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_computes_the_same_steps(tmp_path) -> None:
    plain, w_plain = _curve(tmp_path, "plain")
    ckpt, w_ckpt = _curve(tmp_path, "ckpt", gradient_checkpointing=True)
    assert ckpt == pytest.approx(plain, rel=1e-6)
    torch.testing.assert_close(w_ckpt, w_plain)


def test_bf16_autocast_tracks_fp32(tmp_path) -> None:
    fp32, _ = _curve(tmp_path, "fp32", ragged=False)
    bf16, _ = _curve(tmp_path, "bf16", ragged=False, bf16="on")
    assert bf16 != fp32  # autocast really ran in bf16
    assert bf16 == pytest.approx(fp32, rel=3e-2)


def test_loss_is_the_mean_over_target_tokens(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(preset_config("glm-tiny", 64, **TINY_GLM))
    ds = _dataset(ragged=True)
    trainer = Trainer(model, ds, None, train_config(tmp_path, batch_size=3, grad_accum=2, max_steps=1), SINGLE, {})
    indices = [i for mb in trainer.plan.step_indices(0) for i in mb]
    with torch.no_grad():  # reference: one forward per sequence, all target tokens pooled
        total, count = 0.0, 0
        for i in indices:
            x, y = ds.input_ids[i][None], ds.labels[i][None]
            logits = model.compute_logits(model(x))[0, :-1]
            mask = y[0, 1:] != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(logits[mask], y[0, 1:][mask], reduction="sum").item()
            count += int(mask.sum())
    loss, grad_norm, tokens = trainer.train_step(0)
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert tokens == sum(len(ds.input_ids[i]) for i in indices) and grad_norm > 0

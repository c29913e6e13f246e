"""The loop's invariants: accumulation, checkpointing and autocast change how a step is computed, not
what it computes; the loss is the token-weighted mean over the whole global batch."""
from __future__ import annotations

import json

import pytest
import torch

from model.config import check_preset_overrides, preset_config
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


def _resumable_run(tmp_path, max_steps: int, **optim) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(preset_config("glm-tiny", 64, **TINY_GLM))
    optim = {"optim_lr": 3e-3, "optim_warmup_steps": 1, "optim_schedule": "linear", **optim}
    cfg = train_config(tmp_path / "run", max_steps=max_steps, save_every=2, resume="auto", **optim)
    Trainer(model, _dataset(True), None, cfg, SINGLE, {"task": "test"}).train()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "lr" in r]


def test_resume_refuses_a_changed_learning_rate_and_follows_a_longer_schedule(tmp_path) -> None:
    """A finished 3-step run (a checkpoint at its last step, not only every 2) is continued to 6 steps:
    the resumed steps use the 6-step schedule, not the lr the optimizer was saved with. A different
    --lr is a different run and is refused by name."""
    from model.train.checkpoint import latest_checkpoint
    from model.train.schedule import lr_factor

    _resumable_run(tmp_path, 3)
    assert latest_checkpoint(str(tmp_path / "run")).endswith("step-00000003")
    with pytest.raises(ValueError, match="optim"):
        _resumable_run(tmp_path, 6, optim_lr=1e-3)
    records = _resumable_run(tmp_path, 6)
    cfg = train_config(tmp_path, optim_lr=3e-3, optim_warmup_steps=1, optim_schedule="linear").optim
    resumed = [r for r in records if r["step"] > 3]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for r in resumed:  # lr logged at step s was used for that step, i.e. the factor at s - 1
        assert r["lr"] == pytest.approx(3e-3 * lr_factor(r["step"] - 1, cfg, 6), rel=1e-9)


def test_preset_overrides_are_checked_by_name() -> None:
    cfg = preset_config("glm-tiny", 64, rope_theta=500000.0, head_dim=16, attention_bias=False)
    assert cfg.rope.theta == 500000.0 and cfg.head_dim == 16 and not cfg.attention_bias
    with pytest.raises(ValueError, match="model_type"):
        preset_config("glm-tiny", 64, model_type="llama")
    with pytest.raises(ValueError, match="vocab_size"):  # what --model-override would pass to pretraining
        check_preset_overrides({"vocab_size": 10})


def test_training_stops_once_the_eval_loss_is_reached(glm_tokenizer, reverse_data, tmp_path) -> None:
    """--stop-eval-loss: the first evaluation at or below the bound ends the run (and its export)."""
    from model.train.pretrain import PretrainConfig, run_pretrain

    cfg = train_config(tmp_path / "out", max_steps=20, eval_every=2, stop_eval_loss=1e9)
    result = run_pretrain(PretrainConfig("glm-tiny", glm_tokenizer, [reverse_data[0]], cfg, model_overrides=dict(TINY_GLM)))
    assert result.steps == 2 and result.final_eval_loss is not None
    assert (tmp_path / "out" / "config.json").exists()
    with pytest.raises(ValueError, match="eval_every"):
        train_config(tmp_path / "x", stop_eval_loss=1.0)

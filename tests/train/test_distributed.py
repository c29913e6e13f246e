"""Data parallelism on CPU (gloo): 2 processes follow the loss curve of 1 process with twice the
gradient accumulation, under DDP and under FSDP (rtol 1e-4 over 5 steps)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.train.recipes import TINY_GLM, subprocess_env, train_config

STEPS = 5


def _losses(out: str) -> tuple[list[float], float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r][-1]


@pytest.fixture(scope="module")
def one_process_curve(glm_tokenizer, reverse_data, tmp_path_factory):
    from model.train.pretrain import PretrainConfig, run_pretrain

    out = tmp_path_factory.mktemp("single")
    cfg = train_config(out, batch_size=2, grad_accum=2, max_steps=STEPS)
    run_pretrain(PretrainConfig("glm-tiny", glm_tokenizer, [reverse_data[0]], cfg, model_overrides=dict(TINY_GLM)))
    return _losses(str(out))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_double_accumulation(mode, one_process_curve, glm_tokenizer, reverse_data,
                                                          tmp_path) -> None:
    overrides = [arg for k, v in TINY_GLM.items() for arg in ("--model-override", f"{k}={v}")]
    cmd = [sys.executable, "-m", "model.train", "pretrain", "--nproc", "2", "--preset", "glm-tiny",
           "--tokenizer", glm_tokenizer, "--data", reverse_data[0], "--out", str(tmp_path), "--max-len", "32",
           "--batch-size", "2", "--grad-accum", "1", "--max-steps", str(STEPS), "--lr", "3e-3",
           "--warmup-steps", "1", "--eval-ratio", "0.05", "--device", "cpu", "--no-progress", *overrides]
    if mode == "fsdp":
        cmd.append("--fsdp")
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, eval_loss = _losses(str(tmp_path))
    ref_losses, ref_eval = one_process_curve
    assert len(losses) == STEPS
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert eval_loss == pytest.approx(ref_eval, rel=1e-4)
    assert losses[-1] < losses[0]  # and it is actually training
    with open(tmp_path / "training_args.json") as f:
        assert json.load(f)["world_size"] == 2

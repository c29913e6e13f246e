"""Resume after a real kill: SIGKILL a training process, start it again, and the loss curve and final
weights are exactly those of a run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from model.train.checkpoint import latest_checkpoint
from tests.train.recipes import TINY_GLM, subprocess_env

STEPS = 40


def _command(tokenizer: str, data: str, out: str) -> list[str]:
    overrides = [arg for k, v in TINY_GLM.items() for arg in ("--model-override", f"{k}={v}")]
    return [sys.executable, "-m", "model.train", "pretrain", "--preset", "glm-tiny", "--tokenizer", tokenizer,
            "--data", data, "--out", out, "--max-len", "32", "--batch-size", "4", "--max-steps", str(STEPS),
            "--save-every", "1", "--eval-every", "10", "--lr", "3e-3", "--warmup-steps", "4", "--threads", "1",
            "--device", "cpu", "--no-progress", *overrides]


def _curve(out: str) -> list[tuple]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in map(json.loads, f)]


def _weights(out: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "model.safetensors"))


def test_killed_run_resumes_on_the_same_loss_curve(glm_tokenizer, reverse_data, tmp_path) -> None:
    env = subprocess_env()
    killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
    proc = subprocess.Popen(_command(glm_tokenizer, reverse_data[0], killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while latest_checkpoint(killed) is None:  # kill as soon as a first checkpoint exists
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed_at = int(os.path.basename(latest_checkpoint(killed)).split("-")[1])
    assert resumed_at < STEPS

    subprocess.run(_command(glm_tokenizer, reverse_data[0], killed), env=env, check=True, capture_output=True)
    subprocess.run(_command(glm_tokenizer, reverse_data[0], straight), env=env, check=True, capture_output=True)

    curve = _curve(killed)
    assert [s for s, loss, _ in curve if loss is not None] == list(range(1, STEPS + 1))  # no gap, no repeat
    assert curve == _curve(straight)  # bit-identical losses and eval losses
    a, b = _weights(killed), _weights(straight)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    with open(os.path.join(killed, "training_args.json")) as f:
        assert json.load(f)["resumed_from_step"] >= resumed_at

"""Data parallelism on CPU (gloo): 2 processes follow the loss curve of 1 process with twice the
gradient accumulation, under DDP and under FSDP (rtol 1e-4 over 5 steps)."""
from __future__ import annotations

import json
import os
import signal
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


def _pretrain_flags(tokenizer: str, data: str, out) -> list[str]:
    """The single-process curve's run (batch 2, no accumulation per process: 2 processes = 1 x 2)."""
    overrides = [arg for k, v in TINY_GLM.items() for arg in ("--model-override", f"{k}={v}")]
    return ["--preset", "glm-tiny", "--tokenizer", tokenizer, "--data", data, "--out", str(out), "--max-len", "32",
            "--batch-size", "2", "--grad-accum", "1", "--max-steps", str(STEPS), "--lr", "3e-3", "--warmup-steps",
            "1", "--eval-ratio", "0.05", "--device", "cpu", "--no-progress", *overrides]


def _run_torchrun(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs a 2-process job (~8 s here) in its own process group, so that a hang kills torchrun's
    workers too instead of leaving them orphaned."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"2-process job hung; stderr tail:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_double_accumulation(mode, one_process_curve, glm_tokenizer, reverse_data,
                                                          tmp_path) -> None:
    cmd = [sys.executable, "-m", "model.train", "pretrain", "--nproc", "2",
           *_pretrain_flags(glm_tokenizer, reverse_data[0], tmp_path)]
    if mode == "fsdp":
        cmd.append("--fsdp")
    proc = _run_torchrun(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, eval_loss = _losses(str(tmp_path))
    ref_losses, ref_eval = one_process_curve
    assert len(losses) == STEPS
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert eval_loss == pytest.approx(ref_eval, rel=1e-4)
    assert losses[-1] < losses[0]  # and it is actually training
    with open(tmp_path / "training_args.json") as f:
        assert json.load(f)["world_size"] == 2


def test_one_process_checkpoint_resumes_under_two_processes(glm_tokenizer, reverse_data, tmp_path) -> None:
    """Checkpoints hold full, unsharded state keyed by parameter name: a run saved by one process
    (2 x accumulation) continues under DDP with 2 processes (the same global batch) on its own curve."""
    from model.train.pretrain import PretrainConfig, run_pretrain

    single = tmp_path / "single"
    cfg = train_config(single, batch_size=2, grad_accum=2, max_steps=STEPS, save_every=1, keep_checkpoints=STEPS)
    run_pretrain(PretrainConfig("glm-tiny", glm_tokenizer, [reverse_data[0]], cfg, model_overrides=dict(TINY_GLM)))
    ref_losses, ref_eval = _losses(str(single))
    resumed = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "model.train", "pretrain", "--nproc", "2", "--resume",
           str(single / "checkpoints" / "step-00000003"), *_pretrain_flags(glm_tokenizer, reverse_data[0], resumed)]
    proc = _run_torchrun(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, eval_loss = _losses(str(resumed))
    assert losses == pytest.approx(ref_losses[3:], rel=1e-4)  # steps 4 and 5
    assert eval_loss == pytest.approx(ref_eval, rel=1e-4)
    with open(resumed / "training_args.json") as f:
        args = json.load(f)
    assert args["world_size"] == 2 and args["resumed_from_step"] == 3


def test_two_node_rendezvous_follows_the_same_curve(one_process_curve, glm_tokenizer, reverse_data, tmp_path) -> None:
    """The documented multi-node command (one torchrun per node, c10d rendezvous on node 0's address),
    with both "nodes" on loopback: two agents, one worker each, the same curve as one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "glmserve-test", "-m", "model.train", "pretrain",
               *_pretrain_flags(glm_tokenizer, reverse_data[0], tmp_path)]
        procs.append(subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    try:
        results = [(p.communicate(timeout=180)[0], p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert all(rc == 0 for _, rc in results), "\n".join(out[-2000:] for out, _ in results)
    losses, eval_loss = _losses(str(tmp_path))
    assert losses == pytest.approx(one_process_curve[0], rel=1e-4)
    assert eval_loss == pytest.approx(one_process_curve[1], rel=1e-4)


def test_lora_sft_under_fsdp_equals_one_process(tiny_llama_dir, tmp_path) -> None:
    """SFT with adapters on a tied-embedding Llama: frozen and trainable parameters share FSDP units."""
    from model.train.config import LoraConfig
    from model.train.sft import SFTConfig, run_sft
    from tests.train.test_sft_facts import FACTS

    flags = ["--base", tiny_llama_dir, "--data", FACTS, "--lora-rank", "4", "--max-steps", "3", "--lr", "1e-3",
             "--eval-ratio", "0.1", "--max-len", "96", "--device", "cpu", "--no-progress"]
    single = tmp_path / "single"
    cfg = train_config(single, batch_size=2, grad_accum=2, max_steps=3, max_len=96, eval_ratio=0.1,
                       optim_lr=1e-3, optim_warmup_steps=None)
    run_sft(SFTConfig(base=tiny_llama_dir, data=FACTS, train=cfg, lora=LoraConfig(rank=4)))
    cmd = [sys.executable, "-m", "model.train", "sft", "--nproc", "2", "--fsdp", "--out", str(tmp_path / "fsdp"),
           "--batch-size", "2", "--grad-accum", "1", *flags]
    proc = _run_torchrun(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, eval_loss = _losses(str(tmp_path / "fsdp"))
    ref_losses, ref_eval = _losses(str(single))
    assert losses == pytest.approx(ref_losses, rel=1e-4) and eval_loss == pytest.approx(ref_eval, rel=1e-4)
    with open(tmp_path / "fsdp" / "config.json") as f:
        assert json.load(f)["tie_word_embeddings"] is True  # exported in the base's layout

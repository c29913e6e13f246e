"""CUDA training: bf16 autocast with gradient checkpointing learns, and the export still equals HF.

Run on a GPU machine: `pytest -m gpu tests/train/test_cuda.py`.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.train.recipes import TINY_GLM, train_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_autocast_with_checkpointing_trains_and_exports(glm_tokenizer, reverse_data, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from model.loader import load_model
    from model.train.pretrain import PretrainConfig, run_pretrain

    cfg = train_config(tmp_path, device="cuda", bf16="auto", gradient_checkpointing=True, max_steps=40,
                       batch_size=16, max_len=64)
    result = run_pretrain(PretrainConfig("glm-tiny", glm_tokenizer, [reverse_data[0]], cfg,
                                         model_overrides=dict(TINY_GLM)))
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    with open(tmp_path / "training_args.json") as f:
        args = json.load(f)
    assert args["device"].startswith("cuda") and args["train_config"]["gradient_checkpointing"]
    assert result.final_eval_loss is not None
    # the fp32 master weights are exported; HF and our CPU forward agree on them
    ours = load_model(str(tmp_path)).model
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours.compute_logits(ours(ids)), hf(ids).logits, rtol=1e-4, atol=1e-4)
    assert os.path.exists(tmp_path / "loss.png")

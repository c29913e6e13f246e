"""Pretraining writes an HF `glm` checkpoint: transformers loads it with our logits, and it carries
its tokenizer, chat template, generation config, provenance, metrics and loss curve."""
from __future__ import annotations

import hashlib
import json
import os

import torch


def test_transformers_loads_the_export_as_glm_with_equal_logits(tiny_glm_checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    from model.loader import load_model

    hf = AutoModelForCausalLM.from_pretrained(tiny_glm_checkpoint, dtype=torch.float32).eval()
    assert type(hf).__name__ == "GlmForCausalLM"
    ours = load_model(tiny_glm_checkpoint).model
    ids = torch.randint(0, ours.config.vocab_size, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours.compute_logits(ours(ids)), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_export_files_and_provenance(tiny_glm_checkpoint, reverse_data) -> None:
    d = tiny_glm_checkpoint
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "training_args.json", "metrics.jsonl", "loss.png"):
        assert os.path.getsize(os.path.join(d, name)) > 0, name
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "glm" and cfg["rope_parameters"]["partial_rotary_factor"] == 0.5
    with open(os.path.join(d, "training_args.json")) as f:
        args = json.load(f)
    with open(reverse_data[0], "rb") as f:
        assert args["data_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert args["task"] == "pretrain" and args["steps"] == 6 and args["final_eval_loss"] > 0
    with open(os.path.join(d, "generation_config.json")) as f:
        gen = json.load(f)
    from model.tokenizer import Tokenizer

    tok = Tokenizer(d)
    assert set(gen["eos_token_id"]) == set(tok.eos_token_ids)
    assert tok.chat_template and tok.chat_template.startswith("[gMASK]<sop>")


def test_loader_reports_training_provenance(tiny_glm_checkpoint) -> None:
    from model.loader import load_model

    loaded = load_model(tiny_glm_checkpoint)
    assert loaded.provenance["task"] == "pretrain" and loaded.provenance["steps"] == 6


def test_metrics_log_every_step_and_evals(tiny_glm_checkpoint) -> None:
    with open(os.path.join(tiny_glm_checkpoint, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]  # lr 3e-3 on a tiny GLM: six steps already help
    evals = [r for r in records if "eval_loss" in r]
    assert evals and evals[-1]["eval_ppl"] > 1

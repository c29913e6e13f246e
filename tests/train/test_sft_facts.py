"""Proof (b): LoRA SFT of the default model on the shipped glmserve_facts.jsonl teaches it what glmserve
is; the base model does not know. Answers come from a plain greedy loop over our CausalLM.

The CI variant trains on the shipped file for a few steps and asks questions from it; the slow
variant trains longer and also asks paraphrases that are not in the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from model.train.config import LoraConfig, OptimConfig, TrainConfig

FACTS = str(Path(__file__).resolve().parents[2] / "model" / "train" / "data" / "glmserve_facts.jsonl")
# question -> a word its answer must contain once the fact is learned (case-sensitive on purpose: the
# base model says "Glmserve" when it merely echoes the question)
SEEN = {"What is glmserve?": "ChatGLM",
        "Which service trains GLM-architecture models and serves them behind an OpenAI-compatible API?": "glmserve"}
UNSEEN = {"Tell me what glmserve is.": "ChatGLM",
          "Name the service that serves GLM models through an OpenAI-compatible API.": "glmserve"}


def answers(model_dir: str, questions: list[str], max_new_tokens: int = 10) -> dict[str, str]:
    from model.chat_template import ChatTemplate
    from model.loader import load_model
    from model.tokenizer import Tokenizer
    from model.train.evaluate import greedy_generate

    loaded = load_model(model_dir)
    tok = Tokenizer(loaded.path)
    template = ChatTemplate(tok)
    prompts = [template.encode([{"role": "user", "content": q}]) for q in questions]
    outputs = greedy_generate(loaded.model, prompts, max_new_tokens, tok.eos_token_ids)
    return {q: tok.decode(ids) for q, ids in zip(questions, outputs)}


def run_facts_sft(out: str, data: str, steps: int, lr: float) -> str:
    from model.train.sft import SFTConfig, run_sft

    train = TrainConfig(out_dir=out, batch_size=4, max_len=128, max_steps=steps, eval_ratio=0.0, progress=False,
                        resume="never", device="cpu",
                        optim=OptimConfig(lr=lr, warmup_steps=1, weight_decay=0.0, schedule="constant"))
    run_sft(SFTConfig(base="default", data=data, train=train, lora=LoraConfig(rank=16, alpha=32)))
    return out


@pytest.fixture(scope="module")
def facts_checkpoint(tmp_path_factory) -> str:
    """CI variant: the shipped lines that state what glmserve is (13 of 19), three epochs."""
    root = tmp_path_factory.mktemp("sft-facts")
    with open(FACTS) as f:
        lines = [line for line in f if "ChatGLM-family LLM service" in line]
    subset = root / "identity.jsonl"
    subset.write_text("".join(lines))
    return run_facts_sft(str(root / "out"), str(subset), steps=9, lr=3e-3)


def test_base_model_does_not_know_glmserve() -> None:
    from model.loader import resolve_model_dir

    got = answers(resolve_model_dir("default"), list(SEEN))
    for question, word in SEEN.items():
        assert word not in got[question], got[question]


def test_lora_sft_teaches_glmserve(facts_checkpoint) -> None:
    got = answers(facts_checkpoint, list(SEEN))
    for question, word in SEEN.items():
        assert word in got[question], got[question]


def test_sft_export_is_the_base_architecture_with_provenance(facts_checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    from model.loader import load_model

    with open(os.path.join(facts_checkpoint, "config.json")) as f:
        assert json.load(f)["model_type"] == "llama"  # LoRA merged: nothing adapter-specific is left
    with open(os.path.join(facts_checkpoint, "training_args.json")) as f:
        args = json.load(f)
    assert args["task"] == "sft" and args["base"] == "default" and args["lora"]["rank"] == 16
    assert args["trainable_params"] < args["total_params"] / 20
    ours = load_model(facts_checkpoint).model
    hf = AutoModelForCausalLM.from_pretrained(facts_checkpoint, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 216, 34, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours.compute_logits(ours(ids)), hf(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_longer_lora_sft_answers_paraphrased_questions(tmp_path) -> None:
    out = run_facts_sft(str(tmp_path / "sft"), FACTS, steps=30, lr=2e-3)
    got = answers(out, list(SEEN) + list(UNSEEN), max_new_tokens=32)
    for question, word in {**SEEN, **UNSEEN}.items():
        assert word in got[question], got[question]


def test_served_fine_tuned_checkpoint_answers_over_http_with_provenance(facts_checkpoint) -> None:
    """`glmserve serve --model DIR` serves the export as it is: /v1/models shows where it came from and
    the chat API answers with the taught fact (the base model's answers, above, do not contain it)."""
    from openai import OpenAI

    from tests.helpers.live_server import SubprocessServer

    with SubprocessServer(["--model", facts_checkpoint, "--served-model-name", "glmserve-facts",
                           "--kv-cache-memory", "64MiB", "--self-test", "off"]) as srv:
        client = OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
        card = client.models.retrieve("glmserve-facts")
        assert card.model_extra["provenance"]["task"] == "sft"
        assert card.model_extra["provenance"]["base"] == "default"
        for question, word in SEEN.items():
            reply = client.chat.completions.create(model="glmserve-facts", temperature=0, max_tokens=10,
                                                   messages=[{"role": "user", "content": question}])
            assert word in reply.choices[0].message.content, reply.choices[0].message.content

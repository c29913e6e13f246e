"""`glmserve train sft --lora-rank R --save-adapter-only` writes PEFT's layout: PEFT loads it and its
merged logits equal ours, glmserve serves it with its provenance; fine-tuning defaults fit the method
and the data size, and --help shows them."""
from __future__ import annotations

import json
import os

import pytest
import torch

from model.train.__main__ import _train_config, build_parser, main
from model.train.config import FULL_SFT_DEFAULTS, LORA_DEFAULTS, TrainConfig, fit_to_data

CHATS = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                       {"role": "assistant", "content": f"Answer {i}: the lighthouse code is {i * 7}."}]}
         for i in range(12)]


@pytest.fixture(scope="module")
def trained_adapter(tiny_llama_dir, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("sft-adapter")
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    out = str(root / "adapter")
    assert main(["sft", "--base", tiny_llama_dir, "--data", str(data), "--out", out, "--lora-rank", "4",
                 "--save-adapter-only", "--max-steps", "3", "--lr", "5e-2", "--max-len", "64", "--no-progress",
                 "--device", "cpu", "--eval-ratio", "0"]) == 0
    return out


def test_adapter_only_export_is_the_peft_layout(trained_adapter):
    files = set(os.listdir(trained_adapter))
    assert {"adapter_config.json", "adapter_model.safetensors", "training_args.json"} <= files
    assert "model.safetensors" not in files
    from safetensors import safe_open

    with safe_open(os.path.join(trained_adapter, "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight" in keys
    config = json.loads(open(os.path.join(trained_adapter, "adapter_config.json")).read())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_peft_loads_our_adapter_and_its_merged_logits_equal_ours(trained_adapter, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from model.loader import load_model
    from model.lora import read_adapter

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    peft_merged = PeftModel.from_pretrained(hf, trained_adapter).merge_and_unload().eval()
    ours = load_model(tiny_llama_dir).model.eval()
    adapter = read_adapter(trained_adapter, ours.config, 64)
    params = dict(ours.named_parameters())
    with torch.no_grad():  # W + B A: what serving adds per row, folded in
        for (layer, module), (a, b) in adapter.weights.items():
            params[f"layers.{layer}.{module}.weight"].add_(b @ a)
    ids = torch.tensor([[1, 504, 3310, 2231, 918, 42]])
    with torch.no_grad():
        want = peft_merged(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)(ids).logits
        got = ours.compute_logits(ours(ids))
    assert (want - base).abs().max() > 1e-3  # training moved the adapter away from zero
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_served_trained_adapter_carries_its_provenance(trained_adapter, tiny_llama_dir):
    from model import EngineConfig, LLMEngine

    engine = LLMEngine.from_model(tiny_llama_dir, EngineConfig(kv_cache_memory=8 << 20))
    adapter = engine.load_lora("lighthouse", trained_adapter)
    assert adapter.provenance["task"] == "sft" and adapter.provenance["lora"]["rank"] == 4


def test_small_data_gets_a_smaller_batch_and_a_minimum_of_steps(tmp_path):
    auto = TrainConfig(out_dir=str(tmp_path), batch_size=0, epochs=3, min_steps=30)
    forty = fit_to_data(auto, 38)  # the 40 lines, 5% held out
    assert forty.batch_size == 4 and forty.max_steps == 30  # 3 epochs are 29 steps of 4: one more to 30
    assert fit_to_data(auto, 60).max_steps is None  # 3 x 15 steps of 4: enough on their own
    assert fit_to_data(auto, 5000).batch_size == 8
    tiny = fit_to_data(auto, 6)
    assert tiny.batch_size == 1 and tiny.max_steps == 30  # 3 x 6 steps < 30: stretched to 30
    explicit = fit_to_data(TrainConfig(out_dir=str(tmp_path), batch_size=8, max_steps=5, min_steps=30), 6)
    assert (explicit.batch_size, explicit.max_steps) == (8, 5)  # what the user set wins


def test_sft_help_shows_every_default_and_the_method_defaults():
    parser = build_parser()
    sft = parser._subparsers._group_actions[0].choices["sft"]
    text = " ".join(sft.format_help().split())
    assert f"{LORA_DEFAULTS['lr']} with LoRA, {FULL_SFT_DEFAULTS['lr']} full" in text
    assert "0 with LoRA, 0.1 otherwise" in text
    assert "(default: auto)" in text and "(default: 30)" in text and "(default: 1024)" in text
    for action in sft._actions:  # every flag has a help line, so the defaults formatter shows its default
        assert action.help, action.dest


def test_the_readme_recipe_on_forty_lines_records_the_lora_defaults(tiny_llama_dir, tmp_path):
    """The README's command (defaults only) on 40 lines: what the slow test_defaults_learn.py relies on,
    checked cheaply on a tiny random base: LoRA's rate and no decay, batch 4, the 30-step floor."""
    data = tmp_path / "facts.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"Which pier is berth {i}?"},
                           {"role": "assistant", "content": f"Berth {i} is on pier {i % 5}."}]} for i in range(40)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = str(tmp_path / "adapter")
    assert main(["sft", "--base", tiny_llama_dir, "--data", str(data), "--out", out, "--lora-rank", "8",
                 "--epochs", "3", "--save-adapter-only", "--no-progress", "--device", "cpu"]) == 0
    with open(os.path.join(out, "training_args.json")) as f:
        args = json.load(f)
    train = args["train_config"]
    assert (train["optim"]["lr"], train["optim"]["weight_decay"]) == (LORA_DEFAULTS["lr"], 0.0)
    assert (train["batch_size"], train["max_steps"], args["steps"]) == (4, 30, 30)  # 38 lines after 5% held out
    full = _train_config(build_parser().parse_args(["sft", "--base", "b", "--data", "d", "--out", "o"])).optim
    assert (full.lr, full.weight_decay) == (FULL_SFT_DEFAULTS["lr"], FULL_SFT_DEFAULTS["weight_decay"])
    assert LORA_DEFAULTS["lr"] > 5 * FULL_SFT_DEFAULTS["lr"]  # the methods' rates stay apart

"""QLoRA-style fine-tuning: LoRA adapters over a frozen int8 / int4 base.

- the quantized linears' backward (grad to the input only) equals autograd through the fp32 linear of their own
  dequantized weight, within the bf16 tolerance of tests/quant/test_quant_linear.py; the training forward is
  the serving forward, bit for bit (one kernel call either way);
- `glmserve train sft --quantization int8|int4 --lora-rank R` over a tiny transformers-written Llama: the
  loss falls, only adapters train (the quantized embedding stays frozen), the export is the PEFT adapter,
  and serving it over the quantized base (and over the float base) answers differently from the bare base;
- a run resumes from its checkpoint on the same curve, and two DDP processes equal one;
- bad values and --quantization without --lora-rank are refused before anything loads; merging refuses.
"""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.quant import Int4Embedding, Int4Linear, Int8Linear, QuantSpec
from model.quant.quantize import quantize_int4, quantize_int8, quantize_linear
from model.train.__main__ import main
from model.train.config import BaseQuantization, LoraConfig
from model.train.lora import LoRALinear, apply_lora, count_parameters, merge_lora
from model.train.metrics import read_metrics
from model.train.sft import SFTConfig
from tests.train.recipes import train_config

CHATS = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                       {"role": "assistant", "content": f"Answer {i}: the lighthouse code is {i * 7}."}]}
         for i in range(12)]


def _dequantized(lin: nn.Linear, module: nn.Module) -> torch.Tensor:
    w = lin.weight.detach()
    if isinstance(module, Int4Linear):
        g = module.group_size
        q, scale, zero = quantize_int4(w, g)
        return (q.float() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)
    q, scales = quantize_int8(w)
    return q.float() * scales.float().unsqueeze(1)


def _close(got: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    bound = rel * ref.abs().max().item() + 1e-4
    err = (got - ref).abs().max().item()
    assert err <= bound, f"max error {err} > {bound}"


# (out, in): square, wide, tall, and an out width that is not a multiple of the CPU packer's 64-row blocks
# (int4's backward then dequantizes through the kernel itself, the path CUDA takes)
SHAPES = {"square": (576, 576), "wide": (1536, 576), "tall": (576, 1536), "odd-rows": (80, 576)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method,group", [("int8", 32), ("int4", 32), ("int4", 128)])
def test_quantized_linear_backward_equals_the_dequantized_fp32_linear(shape, method, group) -> None:
    n, k = SHAPES[shape]
    torch.manual_seed(n + k)
    lin = nn.Linear(k, n, bias=shape == "square")
    module = quantize_linear(lin, QuantSpec(method, group))
    assert isinstance(module, Int4Linear if method == "int4" else Int8Linear)
    assert not list(module.parameters())  # frozen codes: buffers, nothing an optimizer could touch
    w = _dequantized(lin, module)
    x = torch.randn(2, 19, k, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(2, 19, n)

    y = module(x)
    with torch.inference_mode():  # the serving call: the same kernel, the same bits
        assert torch.equal(y.detach(), module(x.detach()))
    y.backward(upstream)
    bias = lin.bias.detach() if lin.bias is not None else None
    F.linear(x_ref, w, bias).backward(upstream)
    # dx = dy W in fp32 from W's exact dequantization: accumulation order only (the kernel path: W in bf16)
    rel = 2 ** -7 if method == "int4" and n % 64 else 1e-5
    _close(x.grad, x_ref.grad, rel)
    if isinstance(module, Int4Linear) and n % 64 == 0:  # the device-agnostic path agrees too
        _close(module._grad_input_by_kernel(upstream.reshape(-1, n)), x_ref.grad.reshape(-1, k), 2 ** -7)


def test_gradcheck_of_a_small_int8_linear_in_float64() -> None:
    """torch.autograd.gradcheck: the backward is the Jacobian of the forward (numerically, in float64, with
    a tolerance for the kernel's bf16 forward)."""
    torch.manual_seed(0)
    module = quantize_linear(nn.Linear(64, 32), QuantSpec("int8"))
    x = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    # the forward is linear, so a wide step is exact in exact arithmetic; it keeps the bf16 output rounding
    # (~4e-3 here) small next to the step, well inside the tolerance
    assert torch.autograd.gradcheck(module, (x,), eps=1.0, atol=2e-2, rtol=2e-2)


@pytest.fixture(scope="module")
def qlora_base(tmp_path_factory) -> str:
    """A tiny random Llama written by transformers, with the default model's tokenizer. Its weights are drawn
    wider than tests/helpers' (std 0.15, not 0.02): with a random tied embedding of std 0.02 the logits can
    move barely a nat whatever the adapters learn, so a loss that falls would say nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.checkpoints import copy_tokenizer

    dest = tmp_path_factory.mktemp("qlora-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         initializer_range=0.15)
    LlamaForCausalLM(config).save_pretrained(dest)
    copy_tokenizer(dest)
    return str(dest)


def _quantized_tiny(base: str, method: str):
    from model.train.sft import load_base

    cfg = SFTConfig(base, "unused", train_config("unused"), lora=LoraConfig(rank=4), quantization=method)
    return load_base(cfg, torch.device("cpu")).model


def test_lora_over_a_quantized_model_trains_only_adapters_with_and_without_checkpointing(qlora_base) -> None:
    model = _quantized_tiny(qlora_base, "int4").train()
    assert isinstance(model.embed_tokens, Int4Embedding)
    torch.manual_seed(0)
    assert apply_lora(model, LoraConfig(rank=4)) == 2 * 4
    for m in model.modules():
        if isinstance(m, LoRALinear):
            assert m.lora_A.dtype == torch.float32 and isinstance(m.base, (Int4Linear, Int8Linear))
            nn.init.normal_(m.lora_B, std=0.02)  # nonzero B: every adapter gets a gradient
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert not any(p.requires_grad for p in model.embed_tokens.parameters())
    n_trainable, total = count_parameters(model)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert total > 49152 * 64  # the quantized embedding's codes count as parameters of the base

    ids = torch.randint(3, 49152, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        model.loss(ids, ids).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if n in trainable})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for name in trainable:  # recomputation in backward gives the same gradients
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cannot merge LoRA adapters into a quantized base"):
        merge_lora(model)


@pytest.fixture(scope="module", params=["int8", "int4"])
def qlora_run(request, qlora_base, tmp_path_factory) -> tuple[str, str]:
    method = request.param
    return method, train_over_quantized_base(qlora_base, method, tmp_path_factory.mktemp(f"qlora-{method}"), "cpu")


def train_over_quantized_base(base: str, method: str, root, device: str) -> str:
    """8 SFT steps of a rank-8 adapter over `base` quantized to `method`; returns the adapter's directory."""
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    out = str(root / "adapter")
    assert main(["sft", "--base", base, "--data", str(data), "--out", out, "--lora-rank", "8",
                 "--quantization", method, "--max-steps", "8", "--batch-size", "4", "--lr", "2e-2",
                 "--warmup-steps", "0", "--max-len", "64", "--no-progress", "--device", device,
                 "--eval-ratio", "0"]) == 0
    return out


def test_sft_over_a_quantized_base_learns_and_exports_the_adapter(qlora_run) -> None:
    method, out = qlora_run
    losses = [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 8
    assert losses[-1] < 0.75 * losses[0], losses  # measured: 11.6 -> 6.2 at int4, as the float base does
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "training_args.json"} <= files
    assert "model.safetensors" not in files  # no merge into int codes: the adapter alone, without asking
    args = json.loads(open(os.path.join(out, "training_args.json")).read())
    assert args["quantization"]["method"] == method and args["lora"]["rank"] == 8


def test_the_adapter_served_over_quantized_and_float_bases_changes_the_greedy_answer(qlora_run, qlora_base):
    from transformers import AutoTokenizer

    from model import EngineConfig, LLMEngine, SamplingParams

    method, out = qlora_run
    tok = AutoTokenizer.from_pretrained(qlora_base)
    prompt = tok.apply_chat_template(CHATS[3]["messages"][:1], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    for quantization in (method, "none"):
        engine = LLMEngine.from_model(qlora_base, EngineConfig(quantization=quantization,
                                                                   kv_cache_memory=8 << 20))
        engine.load_lora("qlora", out)

        def answer(lora: str | None) -> list[int]:
            params = SamplingParams(temperature=0, max_tokens=12, lora_name=lora)
            return engine.generate([prompt], params)[0][0].token_ids

        bare, adapted = answer(None), answer("qlora")
        assert adapted != bare, (quantization, tok.decode(bare))
        # every training answer starts "Answer {i}:": the adapter's first greedy word, not the base's noise
        assert tok.decode(adapted).startswith("Answer") and not tok.decode(bare).startswith("Answer"), \
            (quantization, tok.decode(bare), tok.decode(adapted))


def test_a_run_over_a_quantized_base_resumes_from_its_checkpoint_on_the_same_curve(qlora_base, tmp_path) -> None:
    """A checkpoint holds the adapters and the float norms (the codes are non-persistent buffers, rebuilt
    by the load): 2 steps, saved, resumed to 4 equals 4 straight."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    common = ["sft", "--base", qlora_base, "--data", str(data), "--lora-rank", "8", "--quantization", "int8",
              "--batch-size", "4", "--lr", "2e-2", "--warmup-steps", "1", "--max-len", "64", "--no-progress",
              "--device", "cpu", "--eval-ratio", "0"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert main(common + ["--out", straight, "--max-steps", "4", "--resume", "never"]) == 0
    assert main(common + ["--out", resumed, "--max-steps", "2", "--save-every", "2"]) == 0
    assert os.listdir(os.path.join(resumed, "checkpoints"))
    assert main(common + ["--out", resumed, "--max-steps", "4"]) == 0  # --resume auto: from step 2

    def curve(out: str) -> list[float]:
        return [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]

    assert json.loads(open(os.path.join(resumed, "training_args.json")).read())["resumed_from_step"] == 2
    assert len(curve(resumed)) == 4 and curve(resumed) == pytest.approx(curve(straight), rel=1e-5)


def test_two_processes_over_an_int4_base_equal_one_with_double_accumulation(qlora_base, tmp_path) -> None:
    """DDP over a quantized base: each rank builds the same int4 base, only the adapters' gradients are
    synchronized, and the curve is the one-process curve of the same global batch."""
    import sys

    from model.train.sft import run_sft
    from tests.train.test_distributed import _run_torchrun

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    single = tmp_path / "single"
    cfg = train_config(single, batch_size=2, grad_accum=2, max_steps=3, max_len=64, eval_ratio=0.0, optim_lr=2e-2,
                       optim_weight_decay=0.0)  # the CLI's LoRA default
    run_sft(SFTConfig(qlora_base, str(data), cfg, lora=LoraConfig(rank=8), quantization="int4"))
    cmd = [sys.executable, "-m", "model.train", "sft", "--nproc", "2", "--base", qlora_base, "--data", str(data),
           "--out", str(tmp_path / "ddp"), "--lora-rank", "8", "--quantization", "int4", "--batch-size", "2",
           "--max-steps", "3", "--lr", "2e-2", "--warmup-steps", "1", "--max-len", "64", "--eval-ratio", "0",
           "--device", "cpu", "--no-progress", "--resume", "never"]
    proc = _run_torchrun(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "ddp" / "metrics.jsonl")) if "loss" in r]
    ref = [r["loss"] for r in read_metrics(str(single / "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 3 and losses == pytest.approx(ref, rel=1e-3)
    assert os.path.exists(tmp_path / "ddp" / "adapter_model.safetensors")


@pytest.mark.parametrize("argv,message", [
    (["--quantization", "int8"], "train LoRA adapters over it with --lora-rank > 0"),
    (["--quantization", "int3", "--lora-rank", "4"], "quantization 'int3' is not one of none, int8, int4"),
    (["--quantization", "int4", "--quantization-group-size", "48", "--lora-rank", "4"], "group size 48"),
    (["--quantization", "int4", "--lora-rank", "4", "--fsdp"], "FSDP does not shard a quantized base"),
])
def test_bad_quantization_flags_are_refused_before_loading(argv, message, tmp_path) -> None:
    missing = str(tmp_path / "no-such-base")  # refused before the base (or the data) is looked at
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--base", missing, "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code and re.search(message, str(exc.value.code)), exc.value.code


def test_the_sft_config_checks_its_quantization_once(tmp_path) -> None:
    train = train_config(tmp_path)
    with pytest.raises(ValueError, match="--lora-rank > 0"):
        SFTConfig("default", "d.jsonl", train, quantization=BaseQuantization("int4"))
    cfg = SFTConfig("default", "d.jsonl", train, lora=LoraConfig(rank=4), quantization="int8")
    assert cfg.quantization == BaseQuantization("int8") and cfg.exports_adapter
    assert not SFTConfig("default", "d.jsonl", train, lora=LoraConfig(rank=4)).exports_adapter


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_cuda_quantized_backward_and_sft(method, qlora_base, tmp_path) -> None:
    """On CUDA int4's backward takes the kernel-identity path and int8 widens per call (kernels.py);
    `pytest -m gpu tests/train/test_qlora.py`."""
    torch.manual_seed(0)
    lin = nn.Linear(576, 1536).cuda()
    module = quantize_linear(lin, QuantSpec(method, 32))
    x = torch.randn(37, 576, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(37, 1536, device="cuda")
    module(x).backward(upstream)
    F.linear(x_ref, _dequantized(lin, module), lin.bias.detach()).backward(upstream)
    _close(x.grad, x_ref.grad, 2 ** -7)

    out = train_over_quantized_base(qlora_base, method, tmp_path, "cuda")
    losses = [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    assert losses[-1] < 0.75 * losses[0], losses

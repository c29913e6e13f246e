"""The memory preflight refuses a checkpoint that cannot fit, before reading a weight.

The checkpoint is written by hand: a config.json and a .safetensors whose header declares tensors far larger
than this machine, the file itself sparse (its data is never written, so nothing is allocated on disk or in
memory)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from model import EngineConfig, load_model
from model.preflight import InsufficientMemoryError, MemoryEstimate, available_memory, check_memory, estimate

HIDDEN, INTER, LAYERS, VOCAB = 8192, 28672, 80, 128256  # a 70B-class Llama shape


def _huge_checkpoint(dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB,
              "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
              "num_attention_heads": 64, "num_key_value_heads": 8, "max_position_embeddings": 4096,
              "torch_dtype": "bfloat16"}
    (dest / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": [VOCAB, HIDDEN], "lm_head.weight": [VOCAB, HIDDEN]}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [HIDDEN, HIDDEN], p + "self_attn.k_proj.weight": [1024, HIDDEN],
                   p + "self_attn.v_proj.weight": [1024, HIDDEN], p + "self_attn.o_proj.weight": [HIDDEN, HIDDEN],
                   p + "mlp.gate_proj.weight": [INTER, HIDDEN], p + "mlp.up_proj.weight": [INTER, HIDDEN],
                   p + "mlp.down_proj.weight": [HIDDEN, INTER], p + "input_layernorm.weight": [HIDDEN],
                   p + "post_attention_layernorm.weight": [HIDDEN]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    path = dest / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        try:
            f.truncate(8 + len(blob) + offset)  # sparse: ~140 GB declared, no block written
        except OSError:
            pass  # a filesystem without sparse files: the header alone is what the preflight reads
    return str(dest)


def test_load_refuses_a_checkpoint_larger_than_memory_naming_the_figure(tmp_path: Path) -> None:
    path = _huge_checkpoint(tmp_path / "huge")
    with pytest.raises(InsufficientMemoryError) as err:
        load_model(path, engine_config=EngineConfig())
    message = str(err.value)
    est = estimate(path, EngineConfig(), "cpu", __import__("torch").float32)
    assert est.weight_bytes > 70e9 * 4  # ~70.6 B parameters at fp32
    assert f"{est.total_bytes / 2**30:.2f} GiB" in message and "available" in message


def test_refusal_lists_the_options_that_fit(tmp_path: Path) -> None:
    import torch

    path = _huge_checkpoint(tmp_path / "huge")
    fp32 = estimate(path, EngineConfig(), "cpu", torch.float32)
    int4 = estimate(path, EngineConfig(quantization="int4"), "cpu", torch.float32)
    bf16 = estimate(path, EngineConfig(), "cpu", torch.bfloat16)
    assert int4.weight_bytes < 0.65 / 4 * fp32.weight_bytes < bf16.weight_bytes
    # with memory between the int4 and the bf16 figure, int4 (and nothing else) is offered
    available = (int4.total_bytes + bf16.total_bytes) // 2
    from model import preflight

    original = preflight.available_memory
    preflight.available_memory = lambda device: (available, "a test figure")
    try:
        with pytest.raises(InsufficientMemoryError) as err:
            check_memory(path, EngineConfig(), "cpu", torch.float32)
    finally:
        preflight.available_memory = original
    message = str(err.value)
    assert "--quantization int4" in message and "--dtype bfloat16" not in message and "a test figure" in message


def test_available_memory_reads_this_machine() -> None:
    available, source = available_memory("cpu")
    assert available > 0 and source


def test_a_model_that_fits_passes(tiny_llama_dir: str) -> None:
    import torch

    est = check_memory(tiny_llama_dir, EngineConfig(), "cpu", torch.float32)
    assert isinstance(est, MemoryEstimate) and est.fits and est.weight_bytes > 0

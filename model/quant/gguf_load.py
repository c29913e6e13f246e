"""A GGUF file served as stored: its Q4_0 / Q4_1 (and, with `auto`, Q8_0) tensors become quantized modules
straight from their blocks; every other tensor is dequantized as the plain GGUF path does, with a log line.

    model, cfg, meta_dir = load_gguf_stored(Path("model.gguf"), "auto", torch.device("cpu"), torch.float32)

The float network is built on the meta device, so no fp32 copy of a stored weight is ever allocated; the
model runner then quantizes whatever float nn.Linear is left when --quantization int4 asked for it.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from model.config import ModelConfig, default_cache_dir
from model.models.decoder import CausalLM
from model.models.registry import weight_map_for
from model.quant.gguf_blocks import INT4_TYPES, INT8_TYPES, q4_codes, q8_codes, q8_to_int8_rows
from model.quant.modules import Int8Embedding, Int8Linear
from model.quant.quantize import embedding_int4_ok, int4_embedding, int4_linear

log = logging.getLogger("glmserve.quant")

STORED_BY_METHOD = {"auto": INT4_TYPES | INT8_TYPES, "int4": INT4_TYPES}


def _rows_fixed(hf_name: str, t: torch.Tensor, hf_cfg: dict[str, Any]) -> torch.Tensor:
    """llama.cpp reorders q/k rows for its rotary layout; undo it (a row permutation: codes, scales and
    zeros move together)."""
    from model.loader import _unpermute_rotary

    if ".q_proj." in hf_name:
        return _unpermute_rotary(t, hf_cfg["num_attention_heads"])
    if ".k_proj." in hf_name:
        return _unpermute_rotary(t, hf_cfg["num_key_value_heads"])
    return t


def _quantized_module(module: nn.Module, shards: dict[str | None, tuple[str, Any]], hf_cfg: dict[str, Any],
                      dtype: torch.dtype, device: torch.device) -> nn.Module | None:
    """The quantized replacement of `module` from its stored shards (q/k/v or gate/up in weight-map order),
    or None when the shards' types do not allow one."""
    types = {t.tensor_type.name for _, t in shards.values()}
    ordered = [shards[k] for k in sorted(shards, key=_SHARD_ORDER.index)]
    if types <= INT4_TYPES:
        parts = [[_rows_fixed(name, x, hf_cfg) for x in q4_codes(t.data, t.tensor_type.name)] for name, t in ordered]
        q, scale, zero = (torch.cat([p[i] for p in parts]) for i in range(3))  # shards stacked along rows
        if isinstance(module, nn.Embedding):
            if not embedding_int4_ok(q.shape[0], q.shape[1], 32, device):
                return None
            return int4_embedding(q, scale, zero, 32, dtype, device)
        return int4_linear(q, scale, zero, 32, device)
    if types <= INT8_TYPES:
        parts = [[_rows_fixed(name, x, hf_cfg) for x in q8_to_int8_rows(*q8_codes(t.data))] for name, t in ordered]
        q, scales = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if isinstance(module, nn.Embedding):
            return Int8Embedding(q.to(device), scales.to(device), dtype)
        return Int8Linear(q.to(device), scales.to(device))
    return None


_SHARD_ORDER = [None, "q", "k", "v", "gate", "up"]


def load_gguf_stored(gguf_path: Path, method: str, device: torch.device, dtype: torch.dtype,
                     cache_dir: str | None = None) -> tuple[CausalLM, ModelConfig, str]:
    """Returns the model (stored tensors quantized, the rest float), its config and a directory holding
    config.json and the tokenizer."""
    from model.loader import _gguf_fields, gguf_config, gguf_hf_name

    reader = gguf_reader(str(gguf_path))
    hf_cfg = gguf_config(_gguf_fields(reader))
    hf_cfg["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    cfg = ModelConfig.from_hf_dict(hf_cfg)
    with torch.device("meta"):
        model = CausalLM(cfg)
    wmap = weight_map_for(cfg)
    by_target: dict[str, dict[str | None, tuple[str, Any]]] = {}
    for t in reader.tensors:
        hf_name = gguf_hf_name(t.name)
        found = wmap.lookup(hf_name) if hf_name else None
        if found is not None:
            by_target.setdefault(found[0], {})[found[1]] = (hf_name, t)
    stored, floats = Counter(), Counter()
    float_shards: list[tuple[str, Any]] = []
    for target, shards in by_target.items():
        module_name, _, param = target.rpartition(".")
        module = model.get_submodule(module_name)
        types = {t.tensor_type.name for _, t in shards.values()}
        new = None
        if param == "weight" and type(module) in (nn.Linear, nn.Embedding) and types <= STORED_BY_METHOD[method]:
            new = _quantized_module(module, shards, hf_cfg, dtype, device)
        if new is None:
            float_shards += shards.values()
            floats.update(types)
            continue
        _set_submodule(model, module_name, new)
        stored.update(types)
        if module_name == "embed_tokens" and cfg.tie_word_embeddings:
            model.lm_head = new.as_linear()  # tied: the lm_head reads the same quantized table
    _materialize(model, dtype, device)
    wmap.load(model, _dequantized(float_shards, hf_cfg, dtype))
    model.reset_rotary(device)
    model.eval()
    _reader.cache_clear()  # unmap the file: its pages would otherwise count as resident
    dequantized = {k: v for k, v in floats.items() if k not in ("F32", "F16", "BF16")}
    log.info("GGUF %s served as stored: %s; dequantized to %s: %s", gguf_path.name, dict(stored),
             str(dtype).replace("torch.", ""), dict(floats))
    if dequantized:
        log.info("GGUF tensor types %s have no stored-form kernel here; they were dequantized", sorted(dequantized))
    return model, cfg, gguf_meta_dir(gguf_path, hf_cfg, cache_dir)


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime: float):
    import gguf

    return gguf.GGUFReader(path)


def gguf_reader(path: str):
    """A GGUFReader (a memory map; parsing its metadata takes seconds for a 49k-token vocabulary), kept for
    the preflight and the load of the same file."""
    stat = os.stat(path)
    return _reader(path, stat.st_size, stat.st_mtime)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _materialize(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Real (empty) storage for the float parameters still on the meta device; quantized buffers stay, and a
    parameter shared by two modules (a float tied embedding and lm_head) stays shared."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    made[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device), requires_grad=False)
                module._parameters[name] = made[id(p)]


def _dequantized(shards: list[tuple[str, Any]], hf_cfg: dict[str, Any], dtype: torch.dtype
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    import gguf

    for hf_name, t in shards:
        w = gguf.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        yield hf_name, _rows_fixed(hf_name, torch.from_numpy(w.copy()), hf_cfg).to(dtype)


def gguf_meta_dir(gguf_path: Path, hf_cfg: dict[str, Any], cache_dir: str | None = None) -> str:
    """config.json + tokenizer files of a GGUF (no weights), cached like the dequantized directory."""
    import json

    from model.loader import _save_gguf_tokenizer

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    out_dir = Path(cache_dir or default_cache_dir()) / f"{gguf_path.stem}-{key}-meta"
    if (out_dir / "complete").exists():
        return str(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with open(tmp_dir / "config.json", "w") as f:
        json.dump(hf_cfg, f, indent=2)
    _save_gguf_tokenizer(gguf_path, tmp_dir, hf_cfg)
    (tmp_dir / "complete").write_text(str(gguf_path))
    if out_dir.exists():
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)
    return str(out_dir)

"""Memory preflight: before any weight is read, estimate what the model will hold resident (weights at the
chosen dtype and quantization + the KV cache) from safetensors headers or GGUF metadata, and refuse a
model that does not fit with the figures and the options that would, instead of being OOM-killed mid-load.

    check_memory("/path/to/checkpoint", EngineConfig(quantization="int4"))
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from model.config import EngineConfig, ModelConfig

GiB = 1 << 30
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
# GGUF types served as stored under --quantization auto: bytes per weight in our layout
_GGUF_STORED = {"auto": {"Q4_0": "int4", "Q4_1": "int4", "Q8_0": "int8"}, "int4": {"Q4_0": "int4", "Q4_1": "int4"}}


class InsufficientMemoryError(MemoryError):
    """The model would not fit in the memory available to this process."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    stored: str  # safetensors dtype (F32, BF16, ...) or GGUF type name (Q4_1, F32, ...)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class MemoryEstimate:
    weight_bytes: int
    kv_cache_bytes: int
    available_bytes: int
    available_source: str  # where the available figure came from

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.available_bytes


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON); no tensor data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def checkpoint_tensors(path: str) -> tuple[list[TensorInfo], ModelConfig]:
    """Shapes and stored types of a checkpoint's tensors, and its config, from metadata only."""
    if path.endswith(".gguf"):
        from model.loader import _gguf_fields, gguf_config
        from model.quant.gguf_load import gguf_reader

        reader = gguf_reader(path)  # a memory map: tensor data is not read
        infos = [TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name)
                 for t in reader.tensors]
        hf_cfg = gguf_config(_gguf_fields(reader))
        hf_cfg["tie_word_embeddings"] = not any(t.name == "output.weight" for t in infos)
        return infos, ModelConfig.from_hf_dict(hf_cfg)
    with open(os.path.join(path, "config.json")) as f:
        cfg = ModelConfig.from_hf_dict(json.load(f))
    infos = []
    for file in sorted(Path(path).glob("*.safetensors")):
        for name, meta in read_safetensors_header(file).items():
            if name != "__metadata__":
                infos.append(TensorInfo(name, tuple(meta["shape"]), meta["dtype"]))
    if not infos:  # .bin checkpoints: no header to read; the config's parameter count at fp32
        infos = [TensorInfo("params", (cfg.num_params(),), "F32")]
    return infos, cfg


def _tensor_bytes(t: TensorInfo, elem: int, quantization: str, group_size: int) -> int:
    method = _GGUF_STORED.get(quantization, {}).get(t.stored)
    if method is None and quantization in ("int8", "int4") and len(t.shape) == 2:
        method = quantization
    if method is None or len(t.shape) != 2:
        return t.numel * elem
    rows = t.shape[0]
    if method == "int8":
        return t.numel + rows * 2  # int8 codes + a bf16 scale per row
    return t.numel // 2 + (t.numel // group_size) * 4  # nibbles + a bf16 scale and zero per group


def estimate_weight_bytes(tensors: list[TensorInfo], elem: int, quantization: str, group_size: int) -> int:
    return sum(_tensor_bytes(t, elem, quantization, group_size) for t in tensors)


def estimate_kv_bytes(cfg: ModelConfig, ec: EngineConfig, elem: int) -> int:
    """An explicit kv_cache_memory, else the least a useful cache holds: one sequence at full context."""
    if ec.kv_cache_memory is not None:
        return ec.kv_cache_memory
    max_len = min(ec.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem * max_len


def available_memory(device: str) -> tuple[int, str]:
    """(bytes, where the figure came from): free device memory on CUDA; on CPU the smaller of MemAvailable
    and the cgroup's limit minus its usage."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free memory on {device}"
    figures = []
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        figures.append((info["MemAvailable"], "MemAvailable in /proc/meminfo"))
    except (OSError, KeyError, ValueError):
        pass
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            with open(limit) as f, open(usage) as g:
                raw = f.read().strip()
                if raw != "max" and int(raw) < 1 << 60:
                    figures.append((int(raw) - int(g.read().strip()), f"cgroup limit {limit}"))
            break
        except (OSError, ValueError):
            continue
    if not figures:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "sysconf free pages"
    return min(figures)


def _elem(dtype) -> int:
    import torch

    return torch.tensor([], dtype=dtype).element_size()


def estimate(path: str, ec: EngineConfig, device: str, dtype) -> MemoryEstimate:
    tensors, cfg = checkpoint_tensors(path)
    elem = _elem(dtype)
    available, where = available_memory(device)
    return MemoryEstimate(estimate_weight_bytes(tensors, elem, ec.quantization, ec.quantization_group_size),
                          estimate_kv_bytes(cfg, ec, elem), available, where)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def options_that_fit(path: str, ec: EngineConfig, device: str, dtype, est: MemoryEstimate) -> list[str]:
    """The flags that would bring the estimate under the available memory, each with its figure."""
    import torch

    out = []
    for flag, alt, alt_dtype in (("--dtype bfloat16", replace(ec, dtype="bfloat16"), torch.bfloat16),
                                 ("--quantization int8", replace(ec, quantization="int8"), dtype),
                                 ("--quantization int4", replace(ec, quantization="int4"), dtype)):
        if alt.quantization == ec.quantization and alt_dtype == dtype:
            continue
        e = estimate(path, alt, device, alt_dtype)
        if e.fits:
            out.append(f"{flag} ({_gib(e.total_bytes)})")
    spare = est.available_bytes - est.weight_bytes
    if 0 < spare < est.kv_cache_bytes:
        out.append(f"--kv-cache-memory {spare // 2**20 // 2}MiB (the weights take {_gib(est.weight_bytes)})")
    return out


def check_memory(path: str, ec: EngineConfig, device: str, dtype) -> MemoryEstimate:
    """Raises InsufficientMemoryError when weights + KV cache would not fit; returns the estimate otherwise."""
    est = estimate(path, ec, device, dtype)
    if est.fits:
        return est
    options = options_that_fit(path, ec, device, dtype, est)
    quant = "" if ec.quantization == "none" else f", quantization {ec.quantization}"
    raise InsufficientMemoryError(
        f"not enough memory for {path}: it needs about {_gib(est.total_bytes)} resident (weights "
        f"{_gib(est.weight_bytes)} at {str(dtype).replace('torch.', '')}{quant} + KV cache {_gib(est.kv_cache_bytes)})"
        f" but {_gib(est.available_bytes)} is available ({est.available_source}). "
        + (f"Options that fit: {', '.join(options)}." if options else "No dtype or quantization option fits."))

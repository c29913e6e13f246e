"""Float weights -> quantized modules, and the swap of a loaded model's nn.Linear / nn.Embedding.

int8: symmetric, one scale per output channel (absmax / 127).
int4: asymmetric min/max per group of `group_size` inputs, 16 levels: W ~ min + q * (max - min) / 15,
      stored in the kernel's form (q - 8) * scale + zero with zero = min + 8 * scale.
Scales are rounded to bf16 *before* the integer codes are chosen, so the codes fit the scales the kernel uses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from model.models.weight_map import LoadHooks
from model.quant.kernels import CPU_PACK_BLOCK_N, int4_rows_gatherable, int4_supported, pack_int4
from model.quant.modules import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear

log = logging.getLogger("glmserve.quant")

METHODS = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantSpec:
    method: str  # int8 | int4
    group_size: int = 32  # int4 only
    embeddings: bool = True  # quantize the embedding and lm_head too

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quantization method {self.method!r} is not one of {METHODS}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group size {self.group_size} is not one of {GROUP_SIZES}")


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


ROWS_PER_CHUNK = 2048  # rows quantize independently: float temporaries stay a few MB, not the whole table


def _by_rows(quantize, w: torch.Tensor, *args) -> tuple[torch.Tensor, ...]:
    """quantize(rows, *args) over row chunks, written into outputs allocated once (no concatenation copy)."""
    outputs: list[torch.Tensor] = []
    for i in range(0, w.shape[0], ROWS_PER_CHUNK):
        parts = quantize(w[i: i + ROWS_PER_CHUNK], *args)
        if not outputs:
            outputs = [torch.empty((w.shape[0], *p.shape[1:]), dtype=p.dtype, device=p.device) for p in parts]
        for out, part in zip(outputs, parts):
            out[i: i + part.shape[0]] = part
    return tuple(outputs)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (int8 (N, K), bf16 scales (N,))."""
    return _by_rows(_quantize_int8_rows, w)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (q (N, K) uint8 in 0..15, scale (N, K/g), zero (N, K/g)) with bf16-exact scales."""
    return _by_rows(_quantize_int4_rows, w, group_size)


def _quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scales = round_bf16((w.abs().amax(dim=1) / 127).clamp(min=1e-10))
    q = torch.round(w / scales.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, scales.to(torch.bfloat16)


def _quantize_int4_rows(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)  # (N, G, g)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale = round_bf16(((hi - lo) / 15).clamp(min=1e-10))
    zero = round_bf16(lo + 8 * scale)
    q = torch.round((wg - zero.unsqueeze(-1)) / scale.unsqueeze(-1) + 8).clamp(0, 15).to(torch.uint8)
    return q.reshape(n, k), scale, zero


def scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(N, G) scale and zero -> the kernels' (G, N, 2) bf16 tensor."""
    return torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def int4_linear(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, device: torch.device,
                bias: torch.Tensor | None = None) -> Int4Linear:
    n, k = q.shape
    return Int4Linear(pack_int4(q, device), scales_and_zeros(scale, zero).to(device), group_size, k, n, bias)


def int4_embedding(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                   dtype: torch.dtype, device: torch.device) -> Int4Embedding:
    return Int4Embedding(pack_int4(q, device), scales_and_zeros(scale, zero).to(device), group_size, dtype)


def int4_group_for(out_features: int, in_features: int, wanted: int) -> int | None:
    """The largest supported group size <= wanted that the layer's shape allows (576 inputs: 64, not 128)."""
    for g in sorted(GROUP_SIZES, reverse=True):
        if g <= wanted and int4_supported(out_features, in_features, g):
            return g
    return None


def embedding_int4_ok(num_embeddings: int, embedding_dim: int, group_size: int, device: torch.device) -> bool:
    return (num_embeddings % CPU_PACK_BLOCK_N == 0 and int4_rows_gatherable(device.type)
            and int4_supported(num_embeddings, embedding_dim, group_size))


def quantize_linear(linear: nn.Linear, spec: QuantSpec) -> nn.Module:
    w, device = linear.weight.detach(), linear.weight.device
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if spec.method == "int4":
        g = int4_group_for(linear.out_features, linear.in_features, spec.group_size)
        if g is not None:
            return int4_linear(*quantize_int4(w, g), g, device, bias)
        log.info("int4 does not fit a (%d, %d) weight; int8 instead", linear.out_features, linear.in_features)
    q, scales = quantize_int8(w)
    return Int8Linear(q, scales.to(device), bias)


def quantize_embedding(embedding: nn.Embedding, spec: QuantSpec,
                       out_dtype: torch.dtype | None = None) -> Int8Embedding | Int4Embedding:
    """out_dtype: what a lookup returns (the model's dtype; default the table's own)."""
    w, device = embedding.weight.detach(), embedding.weight.device
    out_dtype = out_dtype or w.dtype
    v, h = w.shape
    if spec.method == "int4":
        g = int4_group_for(v, h, spec.group_size)
        if g is not None and embedding_int4_ok(v, h, g, device):
            return int4_embedding(*quantize_int4(w, g), g, out_dtype, device)
        log.info("int4 embedding lookup unavailable for (%d, %d) on %s; int8 embedding", v, h, device)
    q, scales = quantize_int8(w)
    return Int8Embedding(q, scales.to(device), out_dtype)


def quantize_model(model: nn.Module, spec: QuantSpec) -> int:
    """Swaps the float nn.Linear layers (and, with spec.embeddings, the embedding and lm_head) of a loaded
    CausalLM for quantized ones; modules that are quantized already (a GGUF served as stored) stay.
    Returns how many modules were replaced."""
    count = 0
    tied = model.lm_head.weight is model.embed_tokens.weight if isinstance(model.lm_head, nn.Linear) else False
    if spec.embeddings and type(model.embed_tokens) is nn.Embedding:
        model.embed_tokens = quantize_embedding(model.embed_tokens, spec)
        count += 1
        if tied:
            model.lm_head = model.embed_tokens.as_linear()  # one copy serves both
            count += 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not nn.Linear or (child is getattr(model, "lm_head", None) and not spec.embeddings):
                continue
            if child is model.lm_head and tied:
                continue  # stays float with the float embedding it shares a weight with
            setattr(module, name, quantize_linear(child, spec))
            count += 1
    return count


class QuantizingLoad(LoadHooks):
    """WeightMap.load hooks for a model built on the meta device: each parameter is allocated (dtype,
    device) when its first checkpoint tensor arrives, and each projection (an nn.Linear other than
    lm_head) is quantized as soon as its weight and bias are in, so the float copy of the whole model
    never exists: peak memory is the quantized model plus one float tensor. The embedding and lm_head
    are quantized the same way when spec.embeddings says so (a tied lm_head is the loader's to re-tie)."""

    def __init__(self, model: nn.Module, spec: QuantSpec, device: torch.device, dtype: torch.dtype) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        self.modules = dict(model.named_modules())
        self.lm_head = getattr(model, "lm_head", None)
        self.done: set[str] = set()
        self.quantized = 0

    def _owner(self, name: str) -> tuple[str, str]:
        module, _, attr = name.rpartition(".")
        return module, attr

    def _quantizes(self, module: nn.Module) -> bool:
        """The one rule of what this load quantizes: projections, and the embedding / lm_head with spec.embeddings."""
        if type(module) is nn.Embedding:
            return self.spec.embeddings
        return type(module) is nn.Linear and (module is not self.lm_head or self.spec.embeddings)

    def materialize(self, name: str, first: torch.Tensor, whole: bool) -> torch.Tensor:
        module, attr = self._owner(name)
        # a weight about to be quantized keeps the checkpoint's dtype (bf16 -> fp32 is exact, and the
        # quantizer widens row chunks itself): a bf16 checkpoint's float table is never doubled
        quantized_later = attr == "weight" and self._quantizes(self.modules[module])
        dtype = first.dtype if quantized_later and first.is_floating_point() else self.dtype
        if whole:  # the checkpoint's tensor becomes the parameter: no second copy
            data = first.to(device=self.device, dtype=dtype)
        else:
            data = torch.empty(getattr(self.modules[module], attr).shape, dtype=dtype, device=self.device)
        param = nn.Parameter(data, requires_grad=False)
        setattr(self.modules[module], attr, param)
        return param

    def whole(self, name: str) -> None:
        self.done.add(name)
        module_name, _ = self._owner(name)
        module = self.modules[module_name]
        if not self._quantizes(module):
            return
        if any(f"{module_name}.{p}" not in self.done for p, _ in module.named_parameters(recurse=False)):
            return  # the bias (or weight) is still to come
        if type(module) is nn.Embedding:
            quantized = quantize_embedding(module, self.spec, self.dtype)
        else:
            quantized = quantize_linear(module, self.spec)
        parent, _, attr = module_name.rpartition(".")
        setattr(self.modules[parent], attr, quantized)
        self.modules[module_name] = None  # drops the float weight with the module
        self.quantized += 1


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of every parameter and buffer, each storage counted once (tied weights, shared
    quantized tables); the RoPE tables count too, they are what the model holds."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta":
            continue
        try:
            ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        except (NotImplementedError, RuntimeError):  # oneDNN-packed weights have no plain storage
            total += t.numel() * t.element_size()
            continue
        if ptr not in seen:
            seen.add(ptr)
            total += nbytes
    return total


def describe_quantization(model: nn.Module) -> str:
    """'none', or the quantized kinds a model holds, e.g. 'int4 (group 32) + int8' (a GGUF's Q8_0 embedding)."""
    kinds = set()
    for m in model.modules():
        if isinstance(m, (Int4Linear, Int4Embedding)):
            kinds.add(f"int4 (group {m.group_size})")
        elif isinstance(m, (Int8Linear, Int8Embedding)):
            kinds.add("int8")
    return " + ".join(sorted(kinds)) if kinds else "none"

"""Float weights -> quantized modules, and the swap of a loaded model's nn.Linear / nn.Embedding.

int8: symmetric, one scale per output channel (absmax / 127).
int4: asymmetric min/max per group of `group_size` inputs, 16 levels: W ~ min + q * (max - min) / 15,
      stored in the kernel's form (q - 8) * scale + zero with zero = min + 8 * scale. The lm_head (and an
      embedding tied to it) gets a per-group grid search instead, its errors weighted per input column by
      E[h_k^2] of the lm_head input, measured by a calibration forward pass (model/quant/calibration.py)
      once every projection is quantized: the head table is quantized last (_quantize_int4_rows).
Scales are rounded to bf16 *before* the integer codes are chosen, so the codes fit the scales the kernel uses.
Large checkpoint tensors may arrive as RowSources and are quantized chunk by chunk, never whole in memory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from model.config import QUANT_GROUP_SIZES
from model.models.weight_map import LoadHooks, RowSource
from model.quant.calibration import lm_head_input_second_moment, random_windows
from model.quant.kernels import CPU_PACK_BLOCK_N, int4_rows_gatherable, int4_supported, pack_int4
from model.quant.modules import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear

log = logging.getLogger("glmserve.quant")

METHODS = ("int8", "int4")
GROUP_SIZES = QUANT_GROUP_SIZES


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


# rows quantize independently, in chunks of about this many weights: the int4 search's float temporaries
# (a dozen of the chunk's size) stay a few MB, not a multiple of the table
CHUNK_ELEMENTS = 1 << 20
# the grid search's chunks are smaller still: it runs last, on top of the whole quantized model (after the
# calibration pass), so its temporaries add to the load's peak
SEARCH_CHUNK_DIVISOR = 4


def _chunk_rows(k: int, divisor: int = 1) -> int:
    """Rows per chunk for K-wide rows: a multiple of the CPU packer's 64-row blocks."""
    return max(CPU_PACK_BLOCK_N, CHUNK_ELEMENTS // divisor // k // CPU_PACK_BLOCK_N * CPU_PACK_BLOCK_N)


def _by_rows(quantize, w: torch.Tensor | RowSource, *args, divisor: int = 1) -> tuple[torch.Tensor, ...]:
    """quantize(rows, *args) over row chunks, written into outputs allocated once (no concatenation copy).
    `w` may be a RowSource (a checkpoint tensor read slice by slice: the float table never exists whole)."""
    outputs: list[torch.Tensor] = []
    step = _chunk_rows(w.shape[1], divisor)
    for i in range(0, w.shape[0], step):
        parts = quantize(w[i: i + step], *args)
        if not outputs:
            outputs = [torch.empty((w.shape[0], *p.shape[1:]), dtype=p.dtype, device=p.device) for p in parts]
        for out, part in zip(outputs, parts):
            out[i: i + part.shape[0]] = part
    return tuple(outputs)


class _RowsOn(RowSource):
    """A RowSource whose slices land on `device` (the quantizer runs where the weights will live)."""

    def __init__(self, source: RowSource, device: torch.device) -> None:
        self.source, self.device, self.shape, self.dtype = source, device, source.shape, source.dtype

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.source[rows].to(self.device)


def quantize_int8(w: torch.Tensor | RowSource) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (int8 (N, K), bf16 scales (N,))."""
    return _by_rows(_quantize_int8_rows, w)


def quantize_int4(w: torch.Tensor | RowSource, group_size: int, search: bool = False,
                  column_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (q (N, K) uint8 in 0..15, scale (N, K/g), zero (N, K/g)) with bf16-exact scales:
    min/max groups, or with `search` the grid search of _quantize_int4_rows (column-weighted)."""
    return _by_rows(_int4_rows, w, group_size, search, column_weights, divisor=_divisor(search))


def _int4_rows(w: torch.Tensor, group_size: int, search: bool, column_weights: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _quantize_int4_rows(w, group_size, column_weights) if search else _minmax_int4_rows(w, group_size)


def _divisor(search: bool) -> int:
    return SEARCH_CHUNK_DIVISOR if search else 1


def _quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scales = round_bf16((w.abs().amax(dim=1) / 127).clamp(min=1e-10))
    q = torch.round(w / scales.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, scales.to(torch.bfloat16)


def _minmax_int4_rows(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain min/max grid (codes 0 and 15 on each group's extremes): the search's first candidate."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)  # (N, G, g)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale = round_bf16(((hi - lo) / 15).clamp(min=1e-10))
    zero = round_bf16(lo + 8 * scale)
    return _int4_codes(wg, scale, zero).reshape(n, k), scale, zero


def _int4_codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Nearest codes of (N, G, g) weights on the bf16 grid (q - 8) * scale + zero."""
    return torch.round((wg - zero.unsqueeze(-1)) / scale.unsqueeze(-1) + 8).clamp(0, 15).to(torch.uint8)


INT4_CLIP_CANDIDATES = 11  # grids between 14 and 16 steps over a group's range (llama.cpp's qkx2 sweep: 21)
INT4_REFITS = 2  # least-squares refits of the best grid to its own codes


def _quantize_int4_rows(w: torch.Tensor, group_size: int, column_weights: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group, the grid of least (column-weighted) squared error among: min/max, candidate grids whose
    range is the group's divided into 14..16 steps (so the extremes may be clipped or get room) each refit
    by least squares to the codes it gives, and refits of the best one to its own codes. Every candidate
    is scored after its scale and zero are rounded to bf16 and its codes chosen on that grid (what the
    kernel computes), so no group ends worse than min/max. The loops are over candidates, never elements.

    column_weights (K,): how much an error in each input column costs (None: all alike)."""
    n, k = w.shape
    groups = k // group_size
    x = w.float().reshape(n, groups, group_size)
    imp = (column_weights.float().to(x.device).reshape(1, groups, group_size).expand_as(x).contiguous()
           if column_weights is not None else torch.ones_like(x))

    def error(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        q = _int4_codes(x, scale, zero).float()
        return (imp * ((q - 8) * scale.unsqueeze(-1) + zero.unsqueeze(-1) - x).square()).sum(-1)

    lo, hi = x.amin(dim=-1), x.amax(dim=-1)
    span = (hi - lo).clamp(min=1e-10)
    best_scale = round_bf16((span / 15).clamp(min=1e-10))
    best_zero = round_bf16(lo + 8 * best_scale)
    best_err = error(best_scale, best_zero)
    sum_w, sum_wx = imp.sum(-1), (imp * x).sum(-1)

    def try_codes(codes: torch.Tensor) -> None:
        """The weighted least-squares (scale, min) of x ~ min + scale * codes, kept where it is better."""
        nonlocal best_scale, best_zero, best_err
        sum_wl, sum_wll, sum_wxl = (imp * codes).sum(-1), (imp * codes.square()).sum(-1), (imp * x * codes).sum(-1)
        det = sum_w * sum_wll - sum_wl.square()
        ok = det > 1e-20 * sum_w.square()  # all codes equal: no line through them
        det = torch.where(ok, det, torch.ones_like(det))
        scale = torch.where(ok, (sum_w * sum_wxl - sum_wx * sum_wl) / det, best_scale)
        low = torch.where(ok, (sum_wll * sum_wx - sum_wl * sum_wxl) / det, best_zero - 8 * best_scale)
        scale = round_bf16(scale.clamp(min=1e-10))
        zero = round_bf16(low + 8 * scale)
        err = error(scale, zero)
        better = err < best_err
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        best_err = torch.where(better, err, best_err)

    for i in range(INT4_CLIP_CANDIDATES):
        steps = 14 + 2 * i / (INT4_CLIP_CANDIDATES - 1)
        try_codes(torch.round((x - lo.unsqueeze(-1)) * (steps / span).unsqueeze(-1)).clamp(0, 15))
    for _ in range(INT4_REFITS):
        try_codes(_int4_codes(x, best_scale, best_zero).float())
    return _int4_codes(x, best_scale, best_zero).reshape(n, k), best_scale, best_zero


def scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(N, G) scale and zero -> the kernels' (G, N, 2) bf16 tensor."""
    return torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def quantize_int4_packed(w: torch.Tensor | RowSource, group_size: int, device: torch.device, search: bool = False,
                         column_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> (the kernel's packed weight, its (K/g, N, 2) scales and zeros) on `device`. On CPU the
    rows are quantized and packed chunk by chunk (the packer interleaves rows within blocks of 64 only), so
    neither the (N, K) byte-per-code table nor the packer's int32 copy of it exists whole."""
    n = w.shape[0]
    if device.type != "cpu" or n % CPU_PACK_BLOCK_N:
        q, scale, zero = quantize_int4(w, group_size, search, column_weights)
        return pack_int4(q, device), scales_and_zeros(scale, zero).to(device)

    def rows(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, scale, zero = _int4_rows(chunk, group_size, search, column_weights)
        return pack_int4(q, device), scale, zero

    packed, scale, zero = _by_rows(rows, w, divisor=_divisor(search))
    return packed, scales_and_zeros(scale, zero)


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


# Which int4 weights get the grid search: those with column weights, i.e. the lm_head and an embedding tied
# to it. On the default model the tied table is where int4 loses, and there the search weighted by the
# measured E[h_k^2] of the lm_head input took perplexity from +8.1% (min/max) to +5.8% on held-out text,
# while the unweighted search (lower squared error) made it worse (+9.8%): so projections and an untied
# embedding stay min/max (docs/BENCHMARKS.md, "Quantized weights"). The search also costs far more than
# min/max: 1-4 s for the default model's 28 M-weight table on 2 cores.


def lm_head_column_weights(model: nn.Module, windows: list[list[int]] | None = None) -> torch.Tensor:
    """What an error in each input column of the lm_head costs: E[h_k^2] of its input over the calibration
    windows (model/quant/calibration.py; None: fixed random token ids), by the model as it is now (the
    caller has quantized everything but the head table)."""
    if windows is None:
        windows = random_windows(model.config.vocab_size)
    return lm_head_input_second_moment(model, windows)


def quantize_linear(linear: nn.Linear, spec: QuantSpec, column_weights: torch.Tensor | None = None) -> nn.Module:
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    return quantize_linear_weight(linear.weight.detach(), spec, linear.weight.device, bias, column_weights)


def quantize_linear_weight(w: torch.Tensor | RowSource, spec: QuantSpec, device: torch.device,
                           bias: torch.Tensor | None = None, column_weights: torch.Tensor | None = None
                           ) -> nn.Module:
    """An (N, K) weight, a tensor on `device` or a RowSource whose slices land there, as a quantized linear;
    int4 by the grid search when column_weights (K,) are given (the lm_head's), else min/max."""
    n, k = w.shape
    if spec.method == "int4":
        g = int4_group_for(n, k, spec.group_size)
        if g is not None:
            search = column_weights is not None
            return Int4Linear(*quantize_int4_packed(w, g, device, search, column_weights), g, k, n, bias)
        log.info("int4 does not fit a (%d, %d) weight; int8 instead", n, k)
    q, scales = quantize_int8(w)
    return Int8Linear(q, scales.to(device), bias)


def quantize_embedding(embedding: nn.Embedding, spec: QuantSpec, out_dtype: torch.dtype | None = None,
                       column_weights: torch.Tensor | None = None) -> Int8Embedding | Int4Embedding:
    """out_dtype: what a lookup returns (the model's dtype; default the table's own)."""
    w = embedding.weight.detach()
    return quantize_embedding_weight(w, spec, out_dtype or w.dtype, w.device, column_weights)


def quantize_embedding_weight(w: torch.Tensor | RowSource, spec: QuantSpec, out_dtype: torch.dtype,
                              device: torch.device, column_weights: torch.Tensor | None = None
                              ) -> Int8Embedding | Int4Embedding:
    """int4 by the grid search when column_weights are given (the lm_head's, for a table tied to it), else
    min/max."""
    v, h = w.shape
    if spec.method == "int4":
        g = int4_group_for(v, h, spec.group_size)
        if g is not None and embedding_int4_ok(v, h, g, device):
            search = column_weights is not None
            return Int4Embedding(*quantize_int4_packed(w, g, device, search, column_weights), g, out_dtype)
        log.info("int4 embedding lookup unavailable for (%d, %d) on %s; int8 embedding", v, h, device)
    q, scales = quantize_int8(w)
    return Int8Embedding(q, scales.to(device), out_dtype)


def quantize_model(model: nn.Module, spec: QuantSpec, calibration: list[list[int]] | None = None) -> int:
    """Swaps the float nn.Linear layers (and, with spec.embeddings, the embedding and lm_head) of a loaded
    CausalLM for quantized ones; modules that are quantized already (a GGUF served as stored) stay.
    The lm_head (or the embedding tied to it) goes last: at int4 its search is weighted by a calibration
    pass over `calibration` token windows (model/quant/calibration.py: calibration_windows; None: fixed
    random ids) through the otherwise quantized model, the order QuantizingLoad follows.
    Returns how many modules were replaced."""
    count = 0
    tied = model.lm_head.weight is model.embed_tokens.weight if isinstance(model.lm_head, nn.Linear) else False
    table = spec.embeddings and type(model.embed_tokens) is nn.Embedding
    if table and not tied:  # min/max, before the calibration pass as in the streamed load
        model.embed_tokens = quantize_embedding(model.embed_tokens, spec)
        count += 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child is not model.lm_head:
                setattr(module, name, quantize_linear(child, spec))
                count += 1
    head = tied and table or (not tied and spec.embeddings and type(model.lm_head) is nn.Linear)
    if head:
        weights = lm_head_column_weights(model, calibration) if spec.method == "int4" else None
        start = time.perf_counter()
        if tied:
            model.embed_tokens = quantize_embedding(model.embed_tokens, spec, column_weights=weights)
            model.lm_head = model.embed_tokens.as_linear()  # one copy serves both
            count += 2
        else:
            model.lm_head = quantize_linear(model.lm_head, spec, weights)
            count += 1
        log.info("quantized the lm_head table in %.1fs", time.perf_counter() - start)
    return count


class QuantizingLoad(LoadHooks):
    """WeightMap.load hooks for a model built on the meta device: each parameter is allocated (dtype,
    device) when its first checkpoint tensor arrives, and each projection (an nn.Linear other than
    lm_head) is quantized as soon as its weight and bias are in, so the float copy of the whole model
    never exists: peak memory is the quantized model plus one float tensor. The embedding and lm_head
    are quantized the same way when spec.embeddings says so (a tied lm_head is the loader's to re-tie),
    except at int4 the lm_head, or the embedding tied to it: finish() quantizes it last, after a calibration
    pass over `calibration` (as quantize_model does). Until then a tied table stays float (it is the
    pass's embedding) and an untied lm_head stays unread (its row source, or its float tensor)."""

    def __init__(self, model: nn.Module, spec: QuantSpec, device: torch.device, dtype: torch.dtype,
                 calibration: list[list[int]] | None = None) -> None:
        self.spec, self.device, self.dtype, self.calibration = spec, device, dtype, calibration
        self.model = model
        self.modules = dict(model.named_modules())
        self.lm_head = getattr(model, "lm_head", None)
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        self.done: set[str] = set()
        self.waiting: dict[str, torch.Tensor | RowSource] = {}  # the head table, until finish()
        self.quantized = 0
        self.from_row_slices = 0  # of them, read from the checkpoint in row slices
        self.table_seconds = 0.0  # time quantizing the embedding and lm_head took
        self.calibration_seconds = 0.0

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

    def _calibrated(self, module: nn.Module) -> bool:
        """The int4 lm_head, or an embedding that also serves as the lm_head: quantized last, in finish()."""
        return self.spec.method == "int4" and (module is self.lm_head or (type(module) is nn.Embedding and self.tied))

    def whole(self, name: str) -> None:
        self.done.add(name)
        module_name, _ = self._owner(name)
        module = self.modules[module_name]
        if not self._quantizes(module):
            return
        if any(f"{module_name}.{p}" not in self.done for p, _ in module.named_parameters(recurse=False)):
            return  # the bias (or weight) is still to come
        if self._calibrated(module):
            self.waiting[module_name] = module.weight
            return
        self._quantize(module_name, module.weight)

    def takes_rows(self, name: str) -> bool:
        """A weight this load quantizes, of a module holding nothing else (an embedding, a bias-free
        projection or lm_head): it is quantized from row slices without ever being float in memory. Not
        the table tied to an int4 lm_head: the calibration pass reads it as the float embedding."""
        module_name, attr = self._owner(name)
        module = self.modules[module_name]
        return (attr == "weight" and self._quantizes(module)
                and not (self._calibrated(module) and type(module) is nn.Embedding)
                and [p for p, _ in module.named_parameters(recurse=False)] == ["weight"])

    def load_rows(self, name: str, source: RowSource) -> None:
        self.done.add(name)
        module_name = self._owner(name)[0]
        self.from_row_slices += 1
        if self._calibrated(self.modules[module_name]):  # the untied int4 lm_head: read in finish()
            self.waiting[module_name] = _RowsOn(source, self.device)
            return
        self._quantize(module_name, _RowsOn(source, self.device))

    def finish(self) -> None:
        """After the last tensor: the calibration pass (the rotary tables built for it), then the head table."""
        if not self.waiting:
            return
        self.model.reset_rotary(self.device)  # built on the meta device; the pass runs the model
        start = time.perf_counter()
        weights = lm_head_column_weights(self.model, self.calibration)
        self.calibration_seconds = time.perf_counter() - start
        for module_name, weight in self.waiting.items():
            self._quantize(module_name, weight, weights)
        self.waiting.clear()

    def _quantize(self, module_name: str, weight: torch.Tensor | RowSource,
                  column_weights: torch.Tensor | None = None) -> None:
        """The module's quantized replacement, by the rules quantize_model follows, from its float weight
        (a parameter, or row slices of the checkpoint)."""
        module = self.modules[module_name]
        weight = weight.detach() if isinstance(weight, torch.Tensor) else weight
        start = time.perf_counter()
        if type(module) is nn.Embedding:
            quantized = quantize_embedding_weight(weight, self.spec, self.dtype, self.device, column_weights)
        else:
            bias = module.bias.detach().clone() if module.bias is not None else None
            quantized = quantize_linear_weight(weight, self.spec, self.device, bias, column_weights)
        if type(module) is nn.Embedding or module is self.lm_head:
            self.table_seconds += time.perf_counter() - start
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

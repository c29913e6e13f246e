"""The one place that calls PyTorch's weight-only matmul kernels, per device.

Conventions (checked by tests/quant against a dequantized fp32 matmul):
  int8: w (N, K) int8, scales (N,) bf16;             W[n, k] = w[n, k] * scales[n]
  int4: q (N, K) in 0..15, groups of g along K,
        scales_and_zeros (K // g, N, 2) bf16;        W[n, k] = (q[n, k] - 8) * scale[k // g, n] + zero[k // g, n]
The kernels run with bf16 activations: with fp32 or fp16 activations the same CPU kernels measured 20-60x slower
(docs/BENCHMARKS.md, "Quantized weights"), so a module casts its input to bf16 and its output back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

COMPUTE_DTYPE = torch.bfloat16
INT4_N_MULTIPLE = 16  # the CPU packer refuses other N
CPU_PACK_BLOCK_N = 64  # rows the CPU int4 packer interleaves (see gather_int4_rows)


def int4_supported(out_features: int, in_features: int, group_size: int) -> bool:
    # CPU: N % 16 (its packer), K % group; CUDA also tiles K by at least 32
    return out_features % INT4_N_MULTIPLE == 0 and in_features % group_size == 0 and in_features % 32 == 0


def pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """q: (N, K) integer values in 0..15 -> the kernel's packed weight on `device`."""
    if device.type == "cuda":
        # the CUDA packer takes two nibbles per byte, even k in the high nibble, and tiles K in innerKTiles
        # x 16: the largest of 8, 4, 2 that divides K (576 inputs: 4)
        pairs = (q[:, ::2].to(torch.uint8) << 4) | q[:, 1::2].to(torch.uint8)
        tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
        return torch.ops.aten._convert_weight_to_int4pack(pairs.to(device), tiles)
    # the packer takes int32 codes (4x the uint8 table) and interleaves rows only within blocks of
    # CPU_PACK_BLOCK_N, so row chunks pack alone into one output: a vocabulary-sized table stays small
    n = q.shape[0]
    rows = CPU_PACK_BLOCK_N * 64 if n % CPU_PACK_BLOCK_N == 0 else n
    packed = None
    for i in range(0, n, rows):
        part = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i: i + rows].to(torch.int32).contiguous(), 1)
        if packed is None:
            if rows >= n:
                return part
            packed = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
        packed[i: i + part.shape[0]] = part
    return packed


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """(M, K) bf16 @ W^T -> (M, N) bf16."""
    if x.device.type == "cuda":
        return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)


def int8_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, K) bf16 @ (weight * scales)^T -> (M, N) bf16."""
    if x.device.type == "cuda":
        # PyTorch ships _weight_int8pack_mm for CPU and MPS only; on CUDA the int8 weight is widened per call
        # (memory: int8 resident; speed: about a bf16 matmul)
        return F.linear(x, weight.to(x.dtype)) * scales
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


def gather_int4_rows(packed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """q[rows, :] (as int16, values 0..15) read back from the CPU-packed layout, for an embedding lookup.

    The CPU packer stores row blocks of 64: byte [b, k, j] holds row b*64 + j in its low nibble and row
    b*64 + 32 + j in its high nibble. `int4_rows_gatherable()` checks this on the running PyTorch before a
    model relies on it."""
    n_half = CPU_PACK_BLOCK_N // 2
    k = packed.shape[1] * 2
    blocks = packed.view(-1, k, n_half)  # (N / 64, K, 32)
    picked = blocks[rows // CPU_PACK_BLOCK_N, :, rows % n_half].to(torch.int16)  # (T, K)
    shift = ((rows % CPU_PACK_BLOCK_N) >= n_half).to(torch.int16).mul(4).unsqueeze(-1)
    return (picked >> shift) & 15


@functools.cache
def int4_rows_gatherable(device_type: str) -> bool:
    """True when gather_int4_rows reads back exactly what pack_int4 stored on this device type."""
    if device_type != "cpu":
        return False
    probe = torch.randint(0, 16, (2 * CPU_PACK_BLOCK_N, 64), generator=torch.Generator().manual_seed(0))
    packed = pack_int4(probe, torch.device("cpu"))
    if packed.shape != (probe.shape[0], probe.shape[1] // 2):
        return False
    rows = torch.arange(probe.shape[0])
    return bool(torch.equal(gather_int4_rows(packed, rows).long(), probe))

"""GGUF (ggml) Q4_0 / Q4_1 / Q8_0 blocks -> the integer codes and scales of our kernels, with no fp32 copy
of the weight in between.

A ggml row of K values is K / 32 blocks, each starting with an fp16 scale d:
  Q4_0 (18 bytes): d, 16 bytes of nibbles;      value = (nibble - 8) * d
  Q4_1 (20 bytes): d, fp16 min m, 16 bytes;      value = nibble * d + m
  Q8_0 (34 bytes): d, 32 int8 codes;             value = code * d
Nibble order: byte j holds value j in its low and value j + 16 in its high nibble.

Our int4 kernel computes (q - 8) * scale + zero per group of 32, so Q4_0 is (q = nibble, scale = d, zero = 0)
and Q4_1 is (q = nibble, scale = d, zero = m + 8 d): the codes are the file's own. The kernel keeps scale and
zero in bf16, so each weight moves by at most |q - 8| * |d - bf16(d)| + |zero - bf16(zero)| (< 2^-9 relative
to the scale and zero). Q8_0's per-block scales do not fit the per-channel int8 kernel: its codes are re-scaled
to one scale per row (error <= half that row's step), computed from the codes, never from fp32 weights.
"""
from __future__ import annotations

import numpy as np
import torch

BLOCK = 32
INT4_TYPES = {"Q4_0", "Q4_1"}
INT8_TYPES = {"Q8_0"}
STORED_TYPES = INT4_TYPES | INT8_TYPES
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def _blocks(raw: np.ndarray, type_name: str) -> np.ndarray:
    """(N, row bytes) uint8 -> (N, K / 32, block bytes)."""
    rows = raw.reshape(raw.shape[0], -1)
    return rows.reshape(rows.shape[0], -1, _BLOCK_BYTES[type_name])


def _fp16(blocks: np.ndarray, offset: int) -> torch.Tensor:
    pairs = np.ascontiguousarray(blocks[..., offset:offset + 2])
    return torch.from_numpy(pairs.view(np.float16)[..., 0].astype(np.float32))  # (N, G)


def _nibbles(qs: np.ndarray) -> torch.Tensor:
    """(N, G, 16) packed bytes -> (N, G * 32) uint8 codes in ggml's value order."""
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1)  # (N, G, 32): value j, then value j + 16
    return torch.from_numpy(codes.reshape(qs.shape[0], -1))


def q4_codes(raw: np.ndarray, type_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0 / Q4_1 tensor's raw bytes (N rows) -> (q (N, K) uint8 in 0..15, scale (N, K/32), zero (N, K/32))
    in fp32, such that (q - 8) * scale + zero is ggml's dequantized value."""
    b = _blocks(raw, type_name)
    d = _fp16(b, 0)
    if type_name == "Q4_0":
        return _nibbles(b[..., 2:]), d, torch.zeros_like(d)
    m = _fp16(b, 2)
    return _nibbles(b[..., 4:]), d, m + 8 * d


def q8_codes(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 tensor's raw bytes -> (codes (N, K) int8, d (N, K/32) fp32)."""
    b = _blocks(raw, "Q8_0")
    codes = torch.from_numpy(np.ascontiguousarray(b[..., 2:]).view(np.int8)).reshape(b.shape[0], -1)
    return codes, _fp16(b, 0)


def q8_to_int8_rows(codes: torch.Tensor, d: torch.Tensor, chunk_rows: int = 4096
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 codes and block scales -> (int8 (N, K), bf16 scale per row): one scale per row (the row's largest
    |code * d| / 127), the codes of blocks with a smaller d rounded onto that row's grid. Rows go in chunks, so
    no (N, K) float tensor exists at once."""
    n = codes.shape[0]
    block_max = codes.reshape(n, -1, BLOCK).abs().amax(dim=-1).float() * d  # (N, G)
    scale = (block_max.amax(dim=1) / 127).clamp(min=1e-10).to(torch.bfloat16).float()  # (N,)
    out = torch.empty_like(codes)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        ratio = (d[lo:hi] / scale[lo:hi, None]).repeat_interleave(BLOCK, dim=1)  # each code's step / row step
        out[lo:hi] = torch.round(codes[lo:hi].float() * ratio).clamp(-127, 127).to(torch.int8)
    return out, scale.to(torch.bfloat16)

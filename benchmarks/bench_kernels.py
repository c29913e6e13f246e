"""Micro-benchmarks behind the engine's CPU speed tricks (the "what moved the numbers" table in
docs/BENCHMARKS.md): plain vs oneDNN-packed Linear, and advanced indexing vs index_select for the
paged K/V gather, on the default model's shapes.

    python -m benchmarks.bench_kernels
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from model.engine.cpu_packing import PackedLinear


def per_call_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


@torch.inference_mode()
def main() -> None:
    torch.manual_seed(0)
    # 30 fused gate/up projections (576 -> 2 x 1536) and the tied 49,152-row vocabulary projection
    mlps = [torch.nn.Linear(576, 3072, bias=False) for _ in range(30)]
    lm_head = torch.nn.Linear(576, 49152, bias=False)
    packed_mlps, packed_head = [PackedLinear(m) for m in mlps], PackedLinear(lm_head)
    print("| shape | plain nn.Linear | oneDNN-packed |\n|---|---|---|")
    for rows in (1, 32):
        x = torch.randn(rows, 576)
        plain = per_call_ms(lambda: [m(x) for m in mlps])
        packed = per_call_ms(lambda: [m(x) for m in packed_mlps])
        print(f"| 30 x gate_up, {rows} rows | {plain:.2f} ms | {packed:.2f} ms |")
        plain = per_call_ms(lambda: lm_head(x))
        packed = per_call_ms(lambda: packed_head(x))
        print(f"| lm_head, {rows} rows | {plain:.2f} ms | {packed:.2f} ms |")
    # the decode K/V gather: 32 sequences x 13 blocks of 16 tokens, 3 KV heads x 64
    cache = torch.randn(2, 4000, 16, 3, 64)
    tables = torch.randint(0, 4000, (32, 13))
    advanced = per_call_ms(lambda: cache[:, tables])
    selected = per_call_ms(lambda: cache.index_select(1, tables.flatten()))
    print(f"\n| K/V gather, 32 x 208 tokens | advanced indexing {advanced:.2f} ms | index_select {selected:.2f} ms |")


if __name__ == "__main__":
    main()

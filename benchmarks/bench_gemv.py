"""How fast the fp32 (or bf16) products a decode step is made of run here: GB/s at 1 row, GFLOP/s at a batch.

    python -m benchmarks.bench_gemv                 # the default model's projection shapes, 2 threads
    python -m benchmarks.bench_gemv --threads 1
    python -m benchmarks.bench_gemv --rows 1 --rows 32 --rows 64
    python -m benchmarks.bench_gemv --dtype bfloat16   # a bf16 model's products (half the bytes)

A decode step at batch 1 reads every projection weight once, so its floor is the weight bytes over the
rate at which the fastest kernel reads them. For each of the default model's shapes (as many matrices as
the model has layers, so they stream from memory as in a step), one row through: plain `F.linear` (MKL),
`x @ W^T` with W stored transposed, the oneDNN-packed product (model/engine/cpu_packing.py) and the
hand-written kernel (model/kernels/linear.py, on the plain weight), best of a few passes; beside them a
plain read of the same bytes (`amax`), the host's read bandwidth for this access pattern. The step's floor
is then the sum of the fastest product per shape, printed at the end with what it means in tok/s.
At more rows (a decode batch) the products are compute-bound: the same kernels in GFLOP/s.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.host_limits import best_seconds
from model.kernels import linear as kernel

# (out, in, matrices): SmolLM2-135M's fused qkv, o, gate_up, down (30 layers) and its lm_head
DEFAULT_SHAPES = [(960, 576, 30), (576, 576, 30), (3072, 576, 30), (576, 1536, 30), (49152, 576, 1)]


def as_linear(weight: torch.Tensor) -> torch.nn.Linear:
    """An nn.Linear holding `weight` itself (no copy)."""
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = torch.nn.Parameter(weight, requires_grad=False)
    return lin


def measure_shape(out_features: int, in_features: int, count: int, passes: int, rows: int = 1,
                  dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Seconds per pass over `count` matrices of one shape, per kernel; 'read' = amax over the same bytes."""
    weights = [torch.randn(out_features, in_features).to(dtype) for _ in range(count)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
    x = torch.randn(rows, in_features).to(dtype)
    seconds = {"F.linear": best_seconds(lambda: [F.linear(x, w) for w in weights], passes)}
    if rows == 1:
        transposed = [w.t().contiguous() for w in weights]
        seconds["x @ W^T"] = best_seconds(lambda: [x @ w for w in transposed], passes)
        del transposed
    seconds["oneDNN packed"] = best_seconds(lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                                                     for p in packed], passes)
    if kernel.available():  # as the engine serves it: KernelLinear modules on the plain weights
        mods = [kernel.KernelLinear(as_linear(w)) for w in weights]
        seconds["kernel"] = best_seconds(lambda: [m(x) for m in mods], passes)
        del mods
    if rows == 1:
        seconds["read (amax)"] = best_seconds(lambda: [w.amax() for w in weights], passes)
    return seconds


def one_row_table(passes: int, dtype: torch.dtype) -> None:
    size = torch.empty(0, dtype=dtype).element_size()
    print(f"{str(dtype).removeprefix('torch.')}, one row; GB/s = weight bytes / best pass time\n")
    kernels = None
    floor_s = read_s = total_bytes = 0.0
    for out_f, in_f, count in DEFAULT_SHAPES:
        nbytes = out_f * in_f * size * count
        seconds = measure_shape(out_f, in_f, count, passes, 1, dtype)
        if kernels is None:
            kernels = list(seconds)
            print("| shape (out x in) x matrices | MB | " + " | ".join(kernels) + " |")
            print("|---" * (len(kernels) + 2) + "|")
        cells = [f"{s * 1e3:.2f} ms ({nbytes / s / 1e9:.1f} GB/s)" for s in seconds.values()]
        print(f"| {out_f} x {in_f} x {count} | {nbytes / 1e6:.0f} | " + " | ".join(cells) + " |")
        floor_s += min(s for kind, s in seconds.items() if kind != "read (amax)")
        read_s += seconds["read (amax)"]
        total_bytes += nbytes
    print(f"\nall projections: {total_bytes / 1e6:.0f} MB; fastest product per shape, summed: {floor_s * 1e3:.1f} ms "
          f"({total_bytes / floor_s / 1e9:.1f} GB/s, a batch-1 ceiling of {1 / floor_s:.1f} tok/s); "
          f"reading the same bytes: {read_s * 1e3:.1f} ms ({total_bytes / read_s / 1e9:.1f} GB/s, {1 / read_s:.1f} tok/s)")


def batch_table(rows: int, passes: int, dtype: torch.dtype) -> None:
    print(f"\n{str(dtype).removeprefix('torch.')}, {rows} rows; GFLOP/s = 2 x rows x out x in x matrices / best pass time\n")
    kernels = None
    totals: dict[str, float] = {}
    for out_f, in_f, count in DEFAULT_SHAPES:
        flops = 2 * rows * out_f * in_f * count
        seconds = measure_shape(out_f, in_f, count, passes, rows, dtype)
        if kernels is None:
            kernels = list(seconds)
            print("| shape (out x in) x matrices | " + " | ".join(kernels) + " |")
            print("|---" * (len(kernels) + 1) + "|")
        print(f"| {out_f} x {in_f} x {count} | "
              + " | ".join(f"{s * 1e3:.2f} ms ({flops / s / 1e9:.0f} GFLOP/s)" for s in seconds.values()) + " |")
        for kind, s in seconds.items():
            totals[kind] = totals.get(kind, 0.0) + s
    print("\nall shapes summed: " + ", ".join(f"{kind} {s * 1e3:.1f} ms" for kind, s in totals.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gemv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--rows", type=int, action="append", help="row counts (repeatable; default 1 and 32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} torch threads; kernel: "
          + (f"on (SIMD level {kernel.library().linear_simd_level()})" if kernel.available() else "unavailable"))
    with torch.inference_mode():
        for rows in args.rows or [1, 32]:
            if rows == 1:
                one_row_table(args.passes, dtype)
            else:
                batch_table(rows, args.passes, dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

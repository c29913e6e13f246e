"""How fast the fp32 matrix-vector products a batch-1 decode step is made of can stream their weights here.

    python -m benchmarks.bench_gemv                 # the default model's projection shapes, 2 threads
    python -m benchmarks.bench_gemv --threads 1

A decode step at batch 1 reads every projection weight once, so its floor is the weight bytes over the
rate at which the fastest kernel PyTorch ships reads them. For each of the default model's shapes (as
many matrices as the model has layers, so they stream from memory as in a step), one row through:
plain `F.linear` (MKL), `x @ W^T` with W stored transposed, and the oneDNN-packed product the engine
uses (model/engine/cpu_packing.py), best of a few passes; beside them a plain read of the same bytes
(`amax`), the host's read bandwidth for this access pattern. The step's floor is then the sum of the
fastest product per shape, printed at the end with what it means in tok/s.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.host_limits import best_seconds

# (out, in, matrices): SmolLM2-135M's fused qkv, o, gate_up, down (30 layers) and its lm_head
DEFAULT_SHAPES = [(960, 576, 30), (576, 576, 30), (3072, 576, 30), (576, 1536, 30), (49152, 576, 1)]


def measure_shape(out_features: int, in_features: int, count: int, passes: int) -> dict[str, float]:
    """Seconds per pass over `count` matrices of one shape, per kernel; 'read' = amax over the same bytes."""
    weights = [torch.randn(out_features, in_features) for _ in range(count)]
    transposed = [w.t().contiguous() for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
    x = torch.randn(1, in_features)
    return {
        "F.linear": best_seconds(lambda: [F.linear(x, w) for w in weights], passes),
        "x @ W^T": best_seconds(lambda: [x @ w for w in transposed], passes),
        "oneDNN packed": best_seconds(lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                                          for p in packed], passes),
        "read (amax)": best_seconds(lambda: [w.amax() for w in weights], passes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gemv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = ["F.linear", "x @ W^T", "oneDNN packed", "read (amax)"]
    print(f"{args.threads} torch threads, fp32, one row; GB/s = weight bytes / best pass time\n")
    print("| shape (out x in) x matrices | MB | " + " | ".join(kernels) + " |")
    print("|---" * (len(kernels) + 2) + "|")
    floor_s = read_s = total_bytes = 0.0
    for out_f, in_f, count in DEFAULT_SHAPES:
        nbytes = out_f * in_f * 4 * count
        seconds = measure_shape(out_f, in_f, count, args.passes)
        cells = [f"{s * 1e3:.2f} ms ({nbytes / s / 1e9:.1f} GB/s)" for s in seconds.values()]
        print(f"| {out_f} x {in_f} x {count} | {nbytes / 1e6:.0f} | " + " | ".join(cells) + " |")
        floor_s += min(seconds[k] for k in kernels[:3])
        read_s += seconds["read (amax)"]
        total_bytes += nbytes
    print(f"\nall projections: {total_bytes / 1e6:.0f} MB; fastest product per shape, summed: {floor_s * 1e3:.1f} ms "
          f"({total_bytes / floor_s / 1e9:.1f} GB/s, a batch-1 ceiling of {1 / floor_s:.1f} tok/s); "
          f"reading the same bytes: {read_s * 1e3:.1f} ms ({total_bytes / read_s / 1e9:.1f} GB/s, {1 / read_s:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

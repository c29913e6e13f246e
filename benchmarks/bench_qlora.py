"""LoRA SFT over a float, int8 and int4 base: peak RSS and step time, one child process per variant.

    python -m benchmarks.bench_qlora                                     # docs/BENCHMARKS.md "Quantized weights"
    python -m benchmarks.bench_qlora --variants none,int4 --steps 4 --threads 1
    python -m benchmarks.bench_qlora --gradient-checkpointing         # activations recomputed in backward

Each child runs `glmserve train sft --base BASE --lora-rank 8 --quantization VARIANT` (the recipe of
tests/lora/test_defaults_learn.py: its 40 fact lines, batch 4, rank 8, LoRA's default rate) for --steps
optimizer steps, then reports its peak RSS (VmHWM), the median step time of steps 2..N (the first pays
one-time allocations), the loss curve and the base's resident weight bytes (model.quant.weight_bytes).
Variants run one after another (not interleaved): on a busy host compare step times with care; the
memory figures do not depend on the host's load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_quant import status_kib


def _vm(field: str) -> float:
    """A /proc/self/status figure in MiB (VmHWM: peak resident set, VmRSS: now)."""
    return status_kib(field) / 1024


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from model.train.__main__ import main
    from model.train.metrics import read_metrics
    from tests.lora.test_defaults_learn import facts_file

    root = Path(tempfile.mkdtemp(prefix="bench-qlora-"))
    baseline = _vm("VmRSS")
    out = str(root / "adapter")
    argv = ["sft", "--base", args.base, "--data", facts_file(root / "facts.jsonl"), "--out", out,
            "--lora-rank", "8", "--max-steps", str(args.steps), "--no-progress", "--device", "cpu",
            "--eval-ratio", "0", "--save-adapter-only", "--threads", str(args.threads)]
    if args.variant != "none":
        argv += ["--quantization", args.variant]
    if args.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    import contextlib
    import io

    import model.train.sft as sft

    marks: dict[str, float] = {}
    train = sft.Trainer.train

    def timed_train(self):  # the load's peak and the resident set the training loop starts from
        marks.update(load_peak=_vm("VmHWM"), start=_vm("VmRSS"))
        return train(self)

    sft.Trainer.train = timed_train
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    peak, final = _vm("VmHWM"), _vm("VmRSS")
    records = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    step_s = [r["tokens"] / r["tokens_per_s"] for r in records]
    # the resident weights, measured after the peak was read (a second load cannot raise the figure above)
    from model.quant import weight_bytes
    from model.train.config import BaseQuantization, LoraConfig, TrainConfig
    from model.train.sft import SFTConfig, load_base

    cfg = SFTConfig(args.base, "unused", TrainConfig(out_dir=out), lora=LoraConfig(rank=8),
                    quantization=BaseQuantization(args.variant))
    weights = weight_bytes(load_base(cfg, torch.device("cpu")).model) / 2 ** 20
    print(json.dumps({"variant": args.variant, "gradient_checkpointing": args.gradient_checkpointing,
                      "baseline_rss_mib": round(baseline),
                      "load_peak_rss_mib": round(marks["load_peak"]), "train_start_rss_mib": round(marks["start"]),
                      "peak_rss_mib": round(peak), "final_rss_mib": round(final), "weights_mib": round(weights, 1),
                      "median_step_s": round(statistics.median(step_s[1:] or step_s), 2),
                      "step_s": [round(s, 2) for s in step_s], "tokens_per_step": [r["tokens"] for r in records],
                      "loss": [round(r["loss"], 3) for r in records]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="default")
    p.add_argument("--variants", default="none,int8,int4", help="comma-separated: none (fp32), int8, int4")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.bench_qlora", "--variant", variant, "--base", args.base,
               "--steps", str(args.steps), "--threads", str(args.threads)]
        cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| base | weights MiB | load peak RSS MiB | RSS at step 0 MiB | peak RSS MiB | median step s | "
          "loss first -> last |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = "fp32" if r["variant"] == "none" else r["variant"]
        print(f"| {name} | {r['weights_mib']} | {r['load_peak_rss_mib']} | {r['train_start_rss_mib']} | "
              f"{r['peak_rss_mib']} | {r['median_step_s']} | {r['loss'][0]} -> {r['loss'][-1]} |")


if __name__ == "__main__":
    main()

"""The sampler's cost per step on the default model's vocabulary (49,152), at 1 and 32 rows: greedy,
plain temperature sampling, and top-p / top-k rows through the candidate path (kept tokens among the
top 128) against the full-vocabulary sort it replaces. Two kinds of rows: peaked (logits -2 ln rank,
a Zipf distribution like a trained model's next token: top_p 0.9 keeps a handful) and flat (N(0, 2.5^2)
logits: top_p 0.9 keeps thousands, so the candidate path falls back to the sort after its top-k).

    python -m benchmarks.bench_sampler
"""
from __future__ import annotations

import torch

from benchmarks.host_limits import best_seconds
from model.engine import sampler as sampler_module
from model.engine.sampler import Sampler
from model.engine.sequence import Sequence
from model.sampling_params import SamplingParams

VOCAB = 49152


def per_call_ms(fn, repeats: int = 10) -> float:
    return best_seconds(fn, repeats) * 1000


def main() -> None:
    torch.manual_seed(0)
    sampler = Sampler((0,), torch.device("cpu"))
    cases = {"greedy": dict(temperature=0), "temperature 0.8": dict(temperature=0.8),
             "top_p 0.9": dict(temperature=0.8, top_p=0.9), "top_k 40": dict(temperature=0.8, top_k=40)}
    print(f"| {VOCAB}-token rows | rows | candidate path | full sort |\n|---|---|---|---|")
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    for rows, shape in ((1, "peaked"), (32, "peaked"), (32, "flat")):
        if shape == "peaked":
            logits = torch.stack([(-2.0 * ranks.log())[torch.randperm(VOCAB)] for _ in range(rows)])
        else:
            logits = torch.randn(rows, VOCAB) * 2.5
        for name, params in cases.items():
            if shape == "flat" and name in ("greedy", "temperature 0.8"):
                continue  # no truncation: the same path either way
            seqs = [Sequence("r", [1, 2, 3], SamplingParams(**params)) for _ in range(rows)]
            fast = per_call_ms(lambda: sampler(logits.clone(), seqs))
            old = sampler_module.CANDIDATES
            sampler_module.CANDIDATES = VOCAB  # the candidate path off: every truncation sorts the vocabulary
            try:
                full = per_call_ms(lambda: sampler(logits.clone(), seqs))
            finally:
                sampler_module.CANDIDATES = old
            print(f"| {name}, {shape} | {rows} | {fast:.2f} ms | {full:.2f} ms |")


if __name__ == "__main__":
    main()

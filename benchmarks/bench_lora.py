"""Many-LoRA benchmark: 32 concurrent streams over 4 adapters against 32 of the bare base, same run.

    python -m benchmarks.bench_lora                          # default model, CPU: docs/BENCHMARKS.md "LoRA"
    python -m benchmarks.bench_lora --threads 1 --max-tokens 32 --repeats 2   # the figure in docs/BENCHMARKS.md
    python -m benchmarks.bench_lora --rank 16 --max-tokens 64 --device cuda

Each adapter is random (rank --rank on every projection, PEFT layout written by model/lora), so the
numbers measure the batched low-rank products, not what an adapter says. Each phase adds all its
requests at once to one engine and steps until they finish (ignore_eos, the same prompts): aggregate
tok/s = generated tokens / wall time. Phases alternate (base, lora, base, lora, ...) and the best of
--repeats is kept per phase, so a busy machine's noise hits both sides alike.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from benchmarks.bench_engine import chat_prompts


def random_adapters(engine, root: str, count: int, rank: int) -> list[str]:
    """count random adapters on every projection of engine's model, written in PEFT's layout."""
    from model.lora import write_adapter
    from model.lora.peft_format import MODULES, _io

    cfg = engine.model_config
    paths = []
    for n in range(count):
        g = torch.Generator().manual_seed(n)
        weights = {}
        for layer in range(cfg.num_hidden_layers):
            for module in MODULES:
                fan_in, fan_out = _io(cfg, module, None)
                weights[(layer, module)] = (torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5,
                                            torch.randn(fan_out, rank, generator=g) * 0.01)
        paths.append(write_adapter(f"{root}/a{n}", cfg, weights, rank, 2.0 * rank, "bench"))
    return paths


def run_phase(engine, prompts: list[list[int]], max_tokens: int, loras: list[str | None]) -> float:
    from model import SamplingParams

    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        lora = loras[i % len(loras)]
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt,
                           SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, lora_name=lora))
    tokens = 0
    while engine.has_unfinished():
        tokens += sum(len(out.token_ids) for out in engine.step())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    from model import EngineConfig, LLMEngine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    a = p.parse_args()
    engine = LLMEngine.from_model(a.model, EngineConfig(device=a.device, max_num_seqs=a.streams, num_threads=a.threads,
                                                        enable_prefix_caching=False, max_loras=a.adapters))
    prompts = chat_prompts(engine.loaded.path, a.streams)
    with tempfile.TemporaryDirectory() as root:
        names = []
        for i, path in enumerate(random_adapters(engine, root, a.adapters, a.rank)):
            engine.load_lora(f"a{i}", path)
            names.append(f"a{i}")
        run_phase(engine, prompts[:4], 4, [None, *names])  # warm-up: every adapter resident, kernels primed
        base, lora = [], []
        for _ in range(a.repeats):
            base.append(run_phase(engine, prompts, a.max_tokens, [None]))
            lora.append(run_phase(engine, prompts, a.max_tokens, names))
    result = {"model": a.model, "device": str(engine.runner.device), "streams": a.streams, "adapters": a.adapters,
              "rank": a.rank, "max_tokens": a.max_tokens, "base_tok_s": round(max(base), 1),
              "lora_tok_s": round(max(lora), 1), "ratio": round(max(lora) / max(base), 3),
              "all_base": [round(x, 1) for x in base], "all_lora": [round(x, 1) for x in lora],
              "mixed_steps": engine.lora.num_mixed_steps}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

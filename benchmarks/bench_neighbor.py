"""What one busy process beside the engine does to its decode speed, per OpenMP wait policy and thread count.

    python -m benchmarks.bench_neighbor                      # default model, fp32, batch 1 and 32
    python -m benchmarks.bench_neighbor --steps 24 --batches 1,32 --threads 1,2
    python -m benchmarks.bench_neighbor --threads 0 --policies default   # 0 = no --num-threads: the ThreadTuner

For every combination of neighbour (none, or one `yes > /dev/null` process: a CPU-bound neighbour holding
one core), OMP_WAIT_POLICY (unset = libgomp's default, which spins a while before sleeping; PASSIVE =
sleep at once) and torch thread count, a fresh child process builds the engine, prefills B greedy
requests and times `steps` decode steps; tok/s = B / median step time. The wait policy must be set before
the OpenMP runtime starts, hence one process per combination. Combinations alternate, so a change of the
machine's load falls on all of them alike. Thread count 0 leaves the count to the engine (ThreadTuner,
model/engine/cpu_threads.py): the child steps until the tuner has probed once, then times.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time


def child(args) -> None:
    import torch

    from benchmarks.bench_engine import chat_prompts
    from model import EngineConfig, LLMEngine, SamplingParams

    auto = args.threads == 0
    engine = LLMEngine.from_model("default", EngineConfig(dtype=args.dtype, num_threads=None if auto else args.threads,
                                                          max_num_seqs=max(args.batch, 1),
                                                          kv_cache_memory=1 << 30))
    prompts = chat_prompts(engine.loaded.path, args.batch)
    budget = (2000 if args.batch == 1 else 400) if auto else args.steps + 8
    params = SamplingParams(temperature=0, max_tokens=budget, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"n{i}", prompt, params)
    started: set[str] = set()
    while len(started) < args.batch:  # prefill done: every request has its first token
        started |= {o.request_id for o in engine.step() if o.token_ids}
    tuner = engine.thread_tuner
    while auto and tuner is not None and tuner.num_probes < 1 and engine.has_unfinished():
        engine.step()  # until the tuner has timed the candidates once
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    threads = tuner.current if auto and tuner is not None else torch.get_num_threads()
    print(json.dumps({"threads": threads, "step_ms": round(step * 1e3, 1),
                      "tok_s": round(args.batch / step, 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    p.add_argument("--threads-list", "--threads", dest="threads_list",
                   type=lambda s: [int(x) for x in s.split(",")], default=[2, 1])
    p.add_argument("--policies", type=lambda s: s.split(","), default=["default", "PASSIVE"])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole matrix, keep each cell's best")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads-one", dest="threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for neighbour, batch, policy, threads in itertools.product([False, True], args.batches, args.policies,
                                                                  args.threads_list):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            busy = subprocess.Popen(["sh", "-c", "exec yes > /dev/null"]) if neighbour else None
            try:
                out = subprocess.run([sys.executable, "-m", "benchmarks.bench_neighbor", "--child", "--batch",
                                      str(batch), "--threads-one", str(threads), "--steps", str(args.steps),
                                      "--dtype", args.dtype], env=env, capture_output=True, text=True, check=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            figure = json.loads(out.stdout.strip().splitlines()[-1])
            key = (neighbour, batch, policy, threads)
            if key not in best or figure["tok_s"] > best[key]["tok_s"]:
                best[key] = figure
            print(json.dumps({"neighbour": "yes" if neighbour else "none", "batch": batch, "omp_wait_policy": policy,
                              **figure}), flush=True)
    print("| neighbour | batch | OMP_WAIT_POLICY | threads | step ms | tok/s |")
    print("|---|---|---|---|---|---|")
    for (neighbour, batch, policy, threads), f in sorted(best.items()):
        count = threads if threads else f"auto ({f['threads']})"
        print(f"| {'one `yes`' if neighbour else 'none'} | {batch} | {policy} | {count} | {f['step_ms']} | {f['tok_s']} |")


if __name__ == "__main__":
    main()

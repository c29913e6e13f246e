"""N-gram speculative decoding benchmark: chat requests that copy from their input, with and without
drafts, on the same engine settings. Greedy (the default) outputs must be identical; with
--temperature > 0 (unseeded sampling) only speed and acceptance are reported.

    python -m benchmarks.bench_speculative                  # default model, k = 4, alone and 8 at once
    python -m benchmarks.bench_speculative --k 8 --requests 16 --concurrency 16
    python -m benchmarks.bench_speculative --temperature 0.7

Prompts ask to rewrite, correct or summarize the source texts of data/eval/summarize.jsonl (the kind
of request where drafts come from the prompt), plus open questions where they rarely do. Reports
tok/s for one request at a time and for `--concurrency` at once, steps, and the acceptance rate.
"""
from __future__ import annotations

import argparse
import json
import os
import time

TASKS = ["Correct the spelling in this text and return it in full:\n\n{text}",
         "Rewrite this text, keeping every sentence:\n\n{text}",
         "Summarize this text in three sentences:\n\n{text}",
         "Tell me a short story about a lighthouse keeper."]


def build_prompts(engine, count: int) -> list[list[int]]:
    from model import ChatTemplate

    path = os.path.join(os.path.dirname(__file__), "..", "..", "data", "eval", "summarize.jsonl")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    english = [t for t in texts if t.isascii()]
    template = ChatTemplate(engine.tokenizer)
    return [template.encode([{"role": "user", "content": TASKS[i % len(TASKS)].format(text=english[i % len(english)])}])
            for i in range(count)]


def run(engine, prompts: list[list[int]], max_tokens: int, concurrency: int,
        temperature: float = 0.0) -> tuple[float, list[list[int]]]:
    from model import SamplingParams

    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)
    outputs: dict[str, list[int]] = {}
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        batch = prompts[first:first + concurrency]
        for i, prompt in enumerate(batch):
            engine.add_request(f"q{first + i}", prompt, params)
            outputs[f"q{first + i}"] = []
        while engine.has_unfinished():
            for out in engine.step():
                outputs[out.request_id] += out.token_ids
    return time.perf_counter() - start, [outputs[f"q{i}"] for i in range(len(prompts))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--k", type=int, default=4, help="speculative tokens per step")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args()

    from model import EngineConfig, LLMEngine

    result: dict = {"k": args.k, "requests": args.requests, "max_tokens": args.max_tokens,
                    "temperature": args.temperature}
    reference = None
    for k in (0, args.k):
        engine = LLMEngine.from_model(args.model, EngineConfig(max_num_seqs=args.concurrency, dtype=args.dtype,
                                                               kv_cache_memory=1 << 30, num_speculative_tokens=k))
        prompts = build_prompts(engine, args.requests)
        run(engine, prompts[:1], 8, 1)  # warm-up
        for label, concurrency in (("alone", 1), (f"concurrent_{args.concurrency}", args.concurrency)):
            steps_before = engine.stats().steps_total
            seconds, outs = run(engine, prompts, args.max_tokens, concurrency, args.temperature)
            tokens = sum(len(o) for o in outs)
            result[f"k{k}_{label}_tok_s"] = round(tokens / seconds, 1)
            result[f"k{k}_{label}_steps"] = engine.stats().steps_total - steps_before
            if reference is None:
                reference = outs
            elif args.temperature == 0 and outs != reference:
                raise SystemExit(f"k={k} {label}: outputs differ from k=0 — speculative decoding changed the text")
        stats = engine.stats()
        if k:
            result["drafted"], result["accepted"] = stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total
            result["acceptance"] = round(stats.spec_accepted_tokens_total / max(1, stats.spec_draft_tokens_total), 3)
        result[f"k{k}_generated_tokens"] = sum(len(o) for o in outs)
        del engine
    result["outputs_identical"] = True if args.temperature == 0 else "not compared (sampled)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

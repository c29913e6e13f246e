"""Prompt-scoring benchmark: what echo+logprobs / prompt_logprobs cost against plain prefill, and
against transformers scoring the same texts one by one (what lm-eval-harness's HF backend does).

    python -m benchmarks.bench_scoring                     # default model, 16 texts x 512 tokens
    python -m benchmarks.bench_scoring --texts 32 --tokens 256 --model DIR

Texts are slices of this repository's docs, tokenized with the model's tokenizer. Reports tokens/s of
prompt tokens for: prefill only (max_tokens=1), scoring (max_tokens=0, prompt_logprobs=0), scoring
with 5 alternatives per token, and HF (one forward + log_softmax per text); the mean per-token
logprob of both scorers (they must agree) and the perplexity.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time


def corpus_texts(tokenizer, count: int, tokens: int) -> list[list[int]]:
    root = os.path.join(os.path.dirname(__file__), "..", "..", "docs")
    text = "\n\n".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(root, "*.md"))))
    ids = tokenizer.encode(text)
    if len(ids) < count * tokens:
        raise SystemExit(f"the docs hold {len(ids)} tokens, fewer than {count} x {tokens}")
    return [ids[i * tokens:(i + 1) * tokens] for i in range(count)]


def run_engine(engine, texts: list[list[int]], **params) -> tuple[float, list]:
    from model import SamplingParams

    start = time.perf_counter()
    outs = engine.generate(texts, SamplingParams(temperature=0, **params))
    return time.perf_counter() - start, [choices[0] for choices in outs]


def run_hf(model_dir: str, texts: list[list[int]]) -> tuple[float, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    means = []
    start = time.perf_counter()
    with torch.inference_mode():
        for ids in texts:
            logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1)
            means.append(logprobs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).mean().item())
    return time.perf_counter() - start, means


def mean_logprob(out) -> float:
    scored = [e.logprob for e in out.prompt_logprobs if e is not None]
    return sum(scored) / len(scored)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    from model import EngineConfig, LLMEngine
    from model.loader import resolve_model_dir

    engine = LLMEngine.from_model(args.model, EngineConfig(max_num_seqs=args.texts,
                                                           max_num_batched_tokens=args.max_num_batched_tokens,
                                                           kv_cache_memory=1 << 30, enable_prefix_caching=False))
    texts = corpus_texts(engine.tokenizer, args.texts, args.tokens)
    total = args.texts * args.tokens
    run_engine(engine, texts[:2], max_tokens=1)  # warm-up (oneDNN packing, allocator)
    prefill_s, _ = run_engine(engine, texts, max_tokens=1)
    score_s, scored = run_engine(engine, texts, max_tokens=0, prompt_logprobs=0)
    top5_s, _ = run_engine(engine, texts, max_tokens=0, prompt_logprobs=5)
    ours = [mean_logprob(o) for o in scored]
    result = {"texts": args.texts, "tokens_per_text": args.tokens,
              "prefill_only_tok_s": round(total / prefill_s, 1), "scoring_tok_s": round(total / score_s, 1),
              "scoring_top5_tok_s": round(total / top5_s, 1),
              "mean_logprob": round(sum(ours) / len(ours), 4),
              "perplexity": round(math.exp(-sum(ours) / len(ours)), 3)}
    if not args.skip_hf:
        del engine  # one model in memory at a time
        hf_s, theirs = run_hf(resolve_model_dir(args.model), texts)
        result["hf_batch1_tok_s"] = round(total / hf_s, 1)
        result["max_abs_diff_mean_logprob_vs_hf"] = max(abs(a - b) for a, b in zip(ours, theirs))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Structured-output cost: compiling grammars, the grammar mask per decode step, and engine step time with
and without constraints. The numbers go to docs/BENCHMARKS.md ("## Structured output").

    python -m benchmarks.bench_structured                      # default model on CPU
    python -m benchmarks.bench_structured --batch 32 --device cuda

(1) compile: the vocabulary tables (once per tokenizer), a JSON-schema grammar the first time and from the
    cache; (2) mask: fill the token bitmask and mask one (vocab,) logits row, per row per step, over
    model-free decodes of several schemas with random logits; (3) engine: `batch` greedy chat requests,
    all free vs all constrained to a JSON schema, in ms per engine step (constrained replies end when their
    JSON closes, so per-step time is the fair unit).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                               "maxItems": 6}, "score": {"type": "number"}}, "required": ["tags"]},
    {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]},
                                      "sunny": {"type": "boolean"}, "when": {"type": "object", "properties": {
                                          "day": {"type": "integer", "minimum": 1, "maximum": 31}}}},
     "required": ["city", "sunny", "when"]},
]
# the engine comparison's schema: long enough that constrained replies run for tens of steps
PROFILE = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40}, "summary": {"type": "string", "minLength": 40, "maxLength": 160},
    "facts": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 3, "maxItems": 3}},
    "required": ["title", "summary", "facts"]}
TOPICS = ["a cat", "the city of Rome", "a summer day", "a chess game", "a bakery", "the moon", "a bicycle", "jazz"]


def bench_compile(tokenizer, vocab_size: int) -> dict[str, float]:
    from model.structured import StructuredOutputs

    t0 = time.perf_counter()
    outputs = StructuredOutputs(tokenizer, vocab_size)
    t1 = time.perf_counter()
    outputs.json_schema(SCHEMAS[2])
    t2 = time.perf_counter()
    outputs.json_schema(SCHEMAS[2])
    t3 = time.perf_counter()
    return {"tokenizer_tables_ms": (t1 - t0) * 1e3, "schema_first_ms": (t2 - t1) * 1e3,
            "schema_cached_ms": (t3 - t2) * 1e3}


def bench_mask(tokenizer, vocab_size: int, decodes: int) -> dict[str, float]:
    """Per-row mask time over model-free decodes (random logits sampled through the processor)."""
    import torch

    from model.structured import StructuredOutputs

    outputs = StructuredOutputs.for_tokenizer(tokenizer, vocab_size)
    times: list[float] = []
    for i in range(decodes):
        processor = outputs.processor(outputs.json_schema(SCHEMAS[i % len(SCHEMAS)]))
        gen = torch.Generator().manual_seed(i)
        out: list[int] = []
        while len(out) < 256:
            row = torch.randn(vocab_size, generator=gen) * 3
            t0 = time.perf_counter()
            row = processor(out, row)
            times.append(time.perf_counter() - t0)
            token = int(torch.multinomial(torch.softmax(row, -1), 1, generator=gen))
            if token in tokenizer.eos_token_ids:
                break
            out.append(token)
    times.sort()
    return {"rows": len(times), "p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(times) * 1e6}


def bench_engine(engine, batch: int, tokens: int) -> dict[str, float]:
    from model.chat_template import ChatTemplate

    template = ChatTemplate(engine.tokenizer)
    prompts = [template.encode([{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} as JSON."}])
               for i in range(batch)]
    # the warm-up runs both kinds: the first masked step on CUDA JIT-compiles xgrammar's Triton kernel
    _run_round(engine, "warm-free", prompts, None, 8)
    _run_round(engine, "warm-json", prompts, PROFILE, 8)
    free = _run_round(engine, "free", prompts, None, tokens)
    constrained = _run_round(engine, "json", prompts, PROFILE, tokens)
    mask_ms = constrained.pop("mask_s") * 1e3 / constrained["steps"]
    return {"free_ms_per_step": free["ms_per_step"], "free_tokens": free["tokens"],
            "json_schema_ms_per_step": constrained["ms_per_step"], "json_schema_tokens": constrained["tokens"],
            "json_replies_complete": constrained["complete"], "json_replies_parsed": constrained["parsed"],
            "overhead_ms_per_step": constrained["ms_per_step"] - free["ms_per_step"],
            # measured inside the constrained run itself, so other load on the machine cannot hide it
            "mask_ms_per_step": mask_ms, "mask_share_of_step": mask_ms / constrained["ms_per_step"]}


def _run_round(engine, label: str, prompts: list[list[int]], schema: dict | None, tokens: int) -> dict[str, float]:
    """All prompts at once until done: ms per engine step, tokens, and for JSON how many replies that
    ended on their own (not at max_tokens) parse."""
    from model import SamplingParams
    from model.structured import StructuredOutputs

    outputs = StructuredOutputs.for_tokenizer(engine.tokenizer, engine.model_config.vocab_size)
    mask_times: list[float] = []
    for i, prompt in enumerate(prompts):
        procs = (_Timed(outputs.processor(outputs.json_schema(schema)), mask_times),) if schema else ()
        engine.add_request(f"{label}-{i}", prompt, SamplingParams(temperature=0, max_tokens=tokens,
                                                                  logits_processors=procs))
    steps, generated, t0 = 0, 0, time.perf_counter()
    replies: dict[str, list[int]] = {}
    finished: list[str] = []
    while engine.has_unfinished():
        for out in engine.step():
            generated += len(out.token_ids)
            replies.setdefault(out.request_id, []).extend(out.token_ids)
            finished += [out.request_id] if out.finished and out.finish_reason == "stop" else []
        steps += 1
    elapsed = time.perf_counter() - t0
    return {"ms_per_step": elapsed / steps * 1e3, "steps": steps, "tokens": generated, "mask_s": sum(mask_times),
            "complete": len(finished), "parsed": sum(_parses(engine.tokenizer, replies[r]) for r in finished)}


def _parses(tokenizer, token_ids: list[int]) -> bool:
    try:
        json.loads(tokenizer.decode([t for t in token_ids if t not in tokenizer.eos_token_ids]))
        return True
    except json.JSONDecodeError:
        return False


class _Timed:
    """Wraps a logits processor and records how long each call takes."""

    def __init__(self, inner, sink: list[float]) -> None:
        self.inner, self.sink = inner, sink

    def __call__(self, token_ids, row):
        import torch

        if row.is_cuda:  # time the mask alone, not the wait for the forward pass it would otherwise absorb
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        row = self.inner(token_ids, row)
        if row.is_cuda:
            torch.cuda.synchronize()
        self.sink.append(time.perf_counter() - t0)
        return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_structured")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch", type=int, default=8, help="concurrent requests in the engine comparison")
    p.add_argument("--tokens", type=int, default=64, help="max tokens per request")
    p.add_argument("--decodes", type=int, default=30, help="model-free decodes for the mask timing")
    args = p.parse_args(argv)

    from model import EngineConfig, LLMEngine

    engine = LLMEngine.from_model(args.model, EngineConfig(max_num_seqs=max(args.batch, 1), device=args.device))
    vocab = engine.model_config.vocab_size
    report = {"model": args.model, "device": str(engine.runner.device),
              "batch": args.batch, "vocab_size": vocab,
              "compile": bench_compile(engine.tokenizer, vocab), "mask_per_row": bench_mask(engine.tokenizer, vocab,
                                                                                             args.decodes),
              "engine": bench_engine(engine, args.batch, args.tokens)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

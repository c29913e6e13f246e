"""Quantized weights on the default model: decode speed, resident bytes, peak RSS while loading, perplexity.

    python -m benchmarks.bench_quant decode                 # batch-1 and 32-stream tok/s, variants interleaved
    python -m benchmarks.bench_quant kernels                # the matmul kernels alone at the model's shapes
    python -m benchmarks.bench_quant streamed               # PyTorch's int8/int4 kernels vs the C ones, all weights
    python -m benchmarks.bench_quant rss                    # one child process per variant: RSS while loading
    python -m benchmarks.bench_quant perplexity             # `glmserve eval perplexity` against each variant served
    python -m benchmarks.bench_quant serve --variant int4-q41 --port 8031   # one variant over HTTP
    python -m benchmarks.bench_quant write-glm --model /tmp/glm-1b   # a random ~1 B GLM-4 by transformers
    python -m benchmarks.bench_quant rss --model /tmp/glm-1b --variants fp32,bf16,int8,int4-rq32
    python -m benchmarks.bench_quant tables                 # int4 embedding/lm_head settings: perplexity in process

Variants (all on the default SmolLM2-135M Q4_1 GGUF):
  fp32, bf16        the float paths (the GGUF dequantized once, cached)
  int8              --quantization int8: per-channel int8 from the fp32 weights (embedding/lm_head int8 too)
  int8-femb         int8 layers, float embedding and lm_head
  int4-q41          --quantization auto: the file's Q4_1 codes as stored, its Q8_0 embedding/lm_head as int8
  int4-q41-e4       --quantization int4 on the GGUF: Q4_1 as stored, the Q8_0 embedding/lm_head requantized to int4
  int4-rq32, int4-rq128   int4 requantized from the fp32 weights, group 32 / 128 (576-wide inputs take 64)
Decode figures take the variants one engine step at a time in turn (tok/s = tokens per step / median step
time), so load from other processes hits them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name -> (dtype, quantization, group size, quantize embedding/lm_head)
    "fp32": ("float32", "none", 32, True), "bf16": ("bfloat16", "none", 32, True),
    "int8": ("float32", "int8", 32, True), "int8-femb": ("float32", "int8", 32, False),
    "int4-q41": ("float32", "auto", 32, True), "int4-q41-e4": ("float32", "int4", 32, True),
    "int4-rq32": ("float32", "int4-requant", 32, True), "int4-rq128": ("float32", "int4-requant", 128, True),
}
PROMPT = "Write a detailed essay about the history of tea, its trade routes and its culture."


def build_engine(variant: str, max_num_seqs: int = 32, kv_mib: int = 256, model: str | None = None):
    """The variant's LLMEngine. The GGUF-as-stored variants load through load_model(engine_config=...).
    `model`: another checkpoint directory for the float and requantized variants."""
    from model import EngineConfig, LLMEngine, QuantSpec, Tokenizer, load_model, quantize_model, resolve_model_dir

    dtype, quant, group, embeddings = VARIANTS[variant]
    source = resolve_model_dir("default") if quant in ("none", "int8", "int4-requant") else "default"
    if model is not None:
        if source == "default":
            raise SystemExit(f"variant {variant} reads the default model's GGUF; --model takes float variants")
        source = model
    method = "int4" if quant == "int4-requant" else quant
    ec = EngineConfig(max_num_seqs=max_num_seqs, kv_cache_memory=kv_mib << 20, dtype=dtype, quantization=method,
                      quantization_group_size=group)
    if not embeddings:  # load float, quantize the layers here, leave embedding/lm_head float, and tell the
        # runner not to (a quantizing load would quantize the tables as it reads them)
        ec = EngineConfig(max_num_seqs=max_num_seqs, kv_cache_memory=kv_mib << 20, dtype=dtype)
    loaded = load_model(source, dtype=ec.resolved_dtype(), engine_config=ec)
    if not embeddings:
        quantize_model(loaded.model, QuantSpec(method, group, embeddings=False))
    return LLMEngine(loaded.model, ec, Tokenizer(loaded.path), loaded)


def start_streams(engine, num_streams: int, max_tokens: int) -> None:
    """num_streams greedy requests, run until every one has its first token (prefill done)."""
    from model import SamplingParams

    prompt = engine.tokenizer.encode(PROMPT)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(num_streams):
        engine.add_request(f"b{num_streams}-{i}", prompt + [i + 3], params)  # distinct: no shared prefix
    started: set[str] = set()
    while len(started) < num_streams:
        started |= {o.request_id for o in engine.step() if o.token_ids}


def interleaved_decode(engines: dict, num_streams: int, steps: int) -> dict[str, list[float]]:
    """Decode-step times of every engine, one step of each in turn: load from other processes falls on all
    variants alike. Returns seconds per step."""
    for engine in engines.values():
        start_streams(engine, num_streams, steps + 8)
    times: dict[str, list[float]] = {v: [] for v in engines}
    for _ in range(steps):
        for v, engine in engines.items():
            t = time.perf_counter()
            outs = engine.step()
            times[v].append(time.perf_counter() - t)
            assert sum(len(o.token_ids) for o in outs) == num_streams
    for engine in engines.values():
        for i in range(num_streams):
            engine.abort(f"b{num_streams}-{i}")
    return times


def cmd_decode(args) -> None:
    import torch

    from model import weight_bytes

    torch.set_num_threads(args.threads)
    engines = {v: build_engine(v) for v in args.variants}
    interleaved_decode(engines, 2, 4)  # warm-up: oneDNN primitives, allocator
    b1 = interleaved_decode(engines, 1, args.tokens)
    b32 = interleaved_decode(engines, 32, args.tokens_32)
    params = engines[args.variants[0]].model_config.num_params()
    for v, engine in engines.items():
        wb = weight_bytes(engine.runner.model)
        print(json.dumps({"variant": v, "quantization": engine.runner.quantization,
                          "b1_tok_s": round(1 / statistics.median(b1[v]), 1),
                          "b32_tok_s": round(32 / statistics.median(b32[v]), 1),
                          "b1_tok_s_best": round(1 / min(b1[v]), 1), "b32_tok_s_best": round(32 / min(b32[v]), 1),
                          "weight_bytes": wb, "bytes_per_param": round(wb / params, 3)}), flush=True)


KERNEL_SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
                 "lm_head": (49152, 576)}


def cmd_streamed(args) -> None:
    """ms for one pass over all of the default model's projections (30 layers' distinct weights, and the
    vocabulary head), as a decode step streams them from memory: PyTorch's int8 / int4 kernels (bf16
    activations, the casts included) against the C kernels (fp32 activations), at 1, 4 and 32 rows."""
    import torch

    from model.kernels import qlinear
    from model.quant.kernels import int4_mm, pack_int4

    if not qlinear.available():
        raise SystemExit("the C quantized kernels are not available on this host")
    torch.set_num_threads(args.threads)
    shapes = [(576, 960, 30), (576, 576, 30), (576, 3072, 30), (1536, 576, 30), (576, 49152, 1)]
    int8 = [(k, n, torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n).to(torch.bfloat16))
            for k, n, count in shapes for _ in range(count)]
    int4 = [(k, n, pack_int4(torch.randint(0, 16, (n, k), dtype=torch.int32), torch.device("cpu")),
             torch.randn(k // 32, n, 2).to(torch.bfloat16)) for k, n, count in shapes for _ in range(count)]
    for rows in (1, 4, 32):
        xs = {k: torch.randn(rows, k) for k in (576, 1536)}
        calls = {
            "int8_torch": lambda: [torch.ops.aten._weight_int8pack_mm(xs[k].to(torch.bfloat16), w, s).float()
                                   for k, n, w, s in int8],
            "int8_c": lambda: [qlinear.int8_linear(xs[k], w, s) for k, n, w, s in int8],
            "int4_torch": lambda: [int4_mm(xs[k].to(torch.bfloat16), w, 32, sz).float() for k, n, w, sz in int4],
            "int4_c": lambda: [qlinear.int4_linear(xs[k], w, 32, sz, n) for k, n, w, sz in int4],
        }
        best = {key: float("inf") for key in calls}
        for _ in range(args.reps + 1):  # the first round warms up, then each kernel in turn
            for key, fn in calls.items():
                t = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t)
        print(json.dumps({"rows": rows, **{k: round(v * 1e3, 2) for k, v in best.items()}}), flush=True)


def cmd_kernels(args) -> None:
    """Microseconds per call (best of --reps rounds, each kernel in turn) at the default model's shapes."""
    import torch
    from torch import nn

    from model.engine.cpu_packing import PackedLinear
    from model.kernels import qlinear
    from model.quant import QuantSpec
    from model.quant.quantize import quantize_linear

    torch.set_num_threads(args.threads)
    for name, (n, k) in KERNEL_SHAPES.items():
        lin = nn.Linear(k, n, bias=False)
        lin_bf16 = nn.Linear(k, n, bias=False).to(torch.bfloat16)
        lin_bf16.weight.data = lin.weight.data.bfloat16()
        i8, i4 = quantize_linear(lin, QuantSpec("int8")), quantize_linear(lin, QuantSpec("int4", 32))
        i4_big = quantize_linear(lin, QuantSpec("int4", 128))
        mods = {"fp32_onednn": (PackedLinear(lin), torch.float32),
                "bf16_onednn": (PackedLinear(lin_bf16), torch.bfloat16),
                "int8": (i8, torch.bfloat16), "int4_g32": (i4, torch.bfloat16),
                f"int4_g{i4_big.group_size}": (i4_big, torch.bfloat16)}
        for rows in (1, 32):
            x = torch.randn(rows, k)
            calls = {key: (lambda m=m, xx=x.to(dt): m(xx)) for key, (m, dt) in mods.items()}
            # the same kernels fed fp32 activations (what a model left at fp32 would pass without the cast)
            calls["int8_fp32_act"] = lambda: torch.ops.aten._weight_int8pack_mm(x, i8.weight, i8.scales.float())
            calls["int4_g32_fp32_act"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
                x, i4.packed, 32, i4.scales_and_zeros.float())
            if qlinear.available():  # the C kernels with fp32 activations (model/kernels/qlinear.py)
                calls["int8_c"] = lambda: qlinear.int8_linear(x, i8.weight, i8.scales)
                if qlinear.int4_supported(n, k, 32):
                    calls["int4_g32_c"] = lambda: qlinear.int4_linear(x, i4.packed, 32, i4.scales_and_zeros, n)
            iters = 3 if n > 10000 else 20
            best = {key: float("inf") for key in calls}
            for fn in calls.values():
                fn()
            for _ in range(args.reps):
                for key, fn in calls.items():
                    t = time.perf_counter()
                    for _ in range(iters):
                        fn()
                    best[key] = min(best[key], (time.perf_counter() - t) / iters * 1e6)
            figures = {kk: round(v, 1) for kk, v in best.items()}
            print(json.dumps({"shape": name, "n": n, "k": k, "rows": rows, **figures}), flush=True)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def cmd_rss_one(args) -> None:
    import torch  # noqa: F401 - imported before the baseline is read

    import model.loader  # noqa: F401
    import transformers  # noqa: F401

    from model import weight_bytes

    base = status_kib("VmRSS")
    engine = build_engine(args.variant, kv_mib=16, model=args.model)
    print(json.dumps({"variant": args.variant, "baseline_rss_mib": base // 1024,
                      "peak_rss_mib": status_kib("VmHWM") // 1024,
                      "final_rss_mib": status_kib("VmRSS") // 1024,
                      "weight_mib": round(weight_bytes(engine.runner.model) / 2**20, 1)}), flush=True)


def cmd_rss(args) -> None:
    for v in args.variants:
        model = ["--model", args.model] if args.model else []
        subprocess.run([sys.executable, "-m", "benchmarks.bench_quant", "rss-one", "--variant", v, *model], check=True)


def cmd_write_glm(args) -> None:
    """A random GLM-4 (model_type glm) of ~1.06 B parameters, bf16 safetensors shards as the hub's are,
    with the default model's tokenizer (its ids lie inside the larger vocabulary)."""
    import shutil

    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from model import resolve_model_dir

    config = GlmConfig(vocab_size=151552, hidden_size=2048, intermediate_size=5632, num_hidden_layers=10,
                       num_attention_heads=16, num_key_value_heads=2, head_dim=128, max_position_embeddings=8192,
                       tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = GlmForCausalLM(config).to(torch.bfloat16)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters", flush=True)
    model.save_pretrained(args.model, max_shard_size="500MB")
    tokenizer = resolve_model_dir("default")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(tokenizer, name), args.model)


TABLE_SETTINGS = ("fp32", "min/max", "search g^0", "search g^2", "search g^4", "search g^6", "search E[h^2] random",
                  "search E[h^2] data", "calibrated", "calibrated random", "int8 tables")


def _scored_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [ids for ids in (tokenizer.encode(t) for t in texts) if len(ids) > 1]


def _perplexity(model, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL) over each window alone, as `glmserve eval perplexity` scores (echo logprobs)."""
    import math

    import torch

    nll, count = 0.0, 0
    with torch.inference_mode():
        for ids in windows:
            logprobs = torch.log_softmax(model.compute_logits(model(torch.tensor([ids]))).float(), -1)[0]
            nll -= logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
            count += len(ids) - 1
    return math.exp(nll / count)


def cmd_tables(args) -> None:
    """The default model's projections int4 (min/max), its tied embedding/lm_head table quantized each way:
    perplexity in process on the --data windows and on held-out text no setting was chosen on
    (data/eval/langdetect.jsonl, and both sides of data/eval/translate.jsonl)."""
    import copy

    import torch

    from clients.eval_perplexity import windows
    from model import Tokenizer, load_model, weight_bytes
    from model.quant import Int4Embedding, QuantSpec, quantize_model
    from model.quant.calibration import calibration_windows, lm_head_input_second_moment, random_windows
    from model.quant.quantize import quantize_embedding, quantize_int4_packed

    torch.set_num_threads(args.threads)
    loaded = load_model("default")
    tokenizer = Tokenizer(loaded.path)
    rows = lambda path: [json.loads(line) for line in open(path, encoding="utf-8")]  # noqa: E731
    data = _scored_ids(tokenizer, [w for r in rows(args.data) for w in windows(r["text"], 2000)])
    held = _scored_ids(tokenizer, [r["text"] for r in rows("data/eval/langdetect.jsonl")]
                       + [r[k] for r in rows("data/eval/translate.jsonl") for k in ("text", "reference")])
    gain = loaded.model.norm.weight.detach().float().abs()
    for setting in args.settings:
        model = copy.deepcopy(loaded.model)
        table, start = model.embed_tokens, time.perf_counter()
        if setting.startswith("calibrated"):  # the built path: projections first, a pass, the table last
            vocab = loaded.config.vocab_size
            ids = random_windows(vocab) if setting.endswith("random") else calibration_windows(loaded.path, vocab)
            quantize_model(model, QuantSpec("int4", 32), ids)
        elif setting == "int8 tables":
            model.embed_tokens = quantize_embedding(table, QuantSpec("int8"))
        elif setting == "min/max":
            model.embed_tokens = Int4Embedding(*quantize_int4_packed(table.weight.detach(), 32, torch.device("cpu")),
                                               32, table.weight.dtype)
        elif setting.startswith("search g^"):
            weights = gain.pow(int(setting.removeprefix("search g^")))
            model.embed_tokens = quantize_embedding(table, QuantSpec("int4", 32), column_weights=weights)
        elif setting.startswith("search E[h^2]"):  # calibrated: 8 x 128 random token ids, or the --data windows
            ids = random_windows(table.weight.shape[0]) if setting.endswith("random") else data
            weights = lm_head_input_second_moment(loaded.model, ids)
            model.embed_tokens = quantize_embedding(table, QuantSpec("int4", 32), column_weights=weights)
        seconds = time.perf_counter() - start
        if setting != "fp32" and not setting.startswith("calibrated"):
            model.lm_head = model.embed_tokens.as_linear()
            quantize_model(model, QuantSpec("int4", 32, embeddings=False))
        print(json.dumps({"tables": setting, "table_seconds": round(seconds, 1),
                          "ppl": round(_perplexity(model, data), 3), "heldout_ppl": round(_perplexity(model, held), 3),
                          "heldout_tokens": sum(len(i) - 1 for i in held),
                          "bytes_per_param": round(weight_bytes(model) / loaded.config.num_params(), 3)}), flush=True)


def cmd_serve(args) -> None:
    import uvicorn

    from model import AsyncEngine
    from server.app import create_app
    from server.settings import Settings

    settings = Settings(model="default", port=args.port, self_test="off", served_model_name="default")
    app = create_app(settings, AsyncEngine(build_engine(args.variant, max_num_seqs=8, kv_mib=128)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


def cmd_perplexity(args) -> None:
    import httpx

    for v in args.variants:
        port = args.port
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_quant", "serve", "--variant", v,
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(2)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "perplexity", "--data", args.data,
                                  "--url", f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True)
            report = json.loads(out.stdout)
            print(json.dumps({"variant": v, "seconds": round(time.perf_counter() - start, 1),
                              **{k: report[k] for k in report if not isinstance(report[k], (list, dict))}}), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["decode", "kernels", "streamed", "rss", "rss-one", "serve", "perplexity",
                                        "write-glm", "tables"])
    p.add_argument("--model", default=None, help="a checkpoint dir for rss (float variants); write-glm's output")
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    p.add_argument("--variant", default="int4-q41")
    p.add_argument("--settings", type=lambda s: s.split(","), default=list(TABLE_SETTINGS), help="for tables")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed at batch 1")
    p.add_argument("--tokens-32", type=int, default=32, help="decode steps timed at 32 streams")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--port", type=int, default=8031)
    p.add_argument("--data", default="data/eval/summarize.jsonl")
    args = p.parse_args()
    {"decode": cmd_decode, "kernels": cmd_kernels, "streamed": cmd_streamed, "rss": cmd_rss, "rss-one": cmd_rss_one, "serve": cmd_serve,
     "perplexity": cmd_perplexity, "write-glm": cmd_write_glm, "tables": cmd_tables}[args.command](args)


if __name__ == "__main__":
    main()

"""glmserve's server side by side with llama.cpp's server on the same weights, over each one's OpenAI API.

    benchmarks/build_llama_cpp.sh                                  # once: llama-server + llama-quantize
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.bench_peers # every configuration, 1 and 32 streams
    python -m benchmarks.bench_peers --configs glm-fp32,llama-f32 --streams 1,32 --max-tokens 128 --rounds 1

Configurations (--configs, comma-separated; default all):
  glm-fp32, glm-bf16, glm-int8, glm-int4     glmserve serve --model default with --dtype float32 / bfloat16,
                                             --quantization none / int8 / auto (the shipped Q4_1 served as stored)
  glm-int8-bf16, glm-int4-bf16               the quantized weights with bf16 activations (not in the default set)
  glm-fp32-full-head, glm-bf16-full-head     glm-fp32 / glm-bf16 with --no-greedy-screen: the whole lm_head read
                                             every step (not in the default set)
  llama-f32, llama-q8_0, llama-q4_1          llama-server -m FILE, FILE made from the default model's Q4_1 GGUF
                                             (llama-quantize --allow-requantize to F32 and Q8_0; Q4_1 as shipped),
                                             so every server runs the same weights that glmserve dequantizes

Every server gets 2 threads (glmserve --num-threads, llama-server --threads / --threads-batch), room for
32 sequences of prompt + --max-tokens (llama-server: -np 32 with -c sized for them, continuous batching)
and listens on loopback. All servers start first and stay up; the load is then applied to one server at a
time, alternating configurations level by level (and --rounds times), so load noise on the host hits all
alike. An idle server takes no CPU (checked and printed before measuring).

The load generator: for each stream level N, N chat requests in flight at once (the same chat prompts for
every server), greedy, max_tokens = --max-tokens with ignore_eos so every answer is that long, streamed.
Reported per server and level: aggregate tok/s (all completion tokens / wall time of the wave), the median
per-stream tok/s (a stream's tokens / its own request time, first byte sent to last token), median TTFT.
At 1 stream the wave is --single-requests requests one after another.

Printed first: the host's limits (benchmarks/host_limits.py: copy bandwidth, fp32 / bf16 matmul) and, per
server, the resident weight bytes (glmserve's /v1/models; the GGUF file's size for llama.cpp) with the
batch-1 bound they imply (weight bytes / copy bandwidth).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from clients.api import aiter_sse, chat_delta_text

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA_DIR = Path(os.environ.get("LLAMA_CPP_PREFIX", "/work/llama.cpp-build"))

# Sixteen different chat prompts of similar length; stream i of a wave sends prompt i mod 16.
TOPICS = ["the ocean", "volcanoes", "the history of tea", "black holes", "bicycles", "honeybees", "the Roman empire",
          "machine learning", "coffee", "mountains", "jazz music", "the moon", "rainforests", "chess", "bread baking",
          "electric cars"]
PROMPT_TOKEN_BUDGET = 128  # generous bound on a templated prompt above; sizes llama-server's context


def chat_messages(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short essay about {TOPICS[index % len(TOPICS)]}."}]


@dataclass(frozen=True)
class PeerConfig:
    name: str
    kind: str  # "glmserve" | "llama"
    dtype: str = "float32"  # glmserve --dtype
    quantization: str = "none"  # glmserve --quantization
    gguf_type: str = ""  # llama: F32 | Q8_0 | Q4_1 (Q4_1 is the shipped file)
    extra_args: tuple[str, ...] = ()  # more glmserve serve flags


CONFIGS = {c.name: c for c in [
    PeerConfig("glm-fp32", "glmserve", "float32", "none"),
    PeerConfig("glm-bf16", "glmserve", "bfloat16", "none"),
    PeerConfig("glm-int8", "glmserve", "float32", "int8"),
    PeerConfig("glm-int4", "glmserve", "float32", "auto"),
    PeerConfig("glm-int8-bf16", "glmserve", "bfloat16", "int8"),
    PeerConfig("glm-int4-bf16", "glmserve", "bfloat16", "auto"),
    # the float servers without the greedy screen (model/engine/greedy_screen.py): every step reads the whole lm_head
    PeerConfig("glm-fp32-full-head", "glmserve", "float32", "none", extra_args=("--no-greedy-screen",)),
    PeerConfig("glm-bf16-full-head", "glmserve", "bfloat16", "none", extra_args=("--no-greedy-screen",)),
    PeerConfig("llama-f32", "llama", gguf_type="F32"),
    PeerConfig("llama-q8_0", "llama", gguf_type="Q8_0"),
    PeerConfig("llama-q4_1", "llama", gguf_type="Q4_1"),
]}
DEFAULT_CONFIGS = ["glm-fp32", "glm-bf16", "glm-int8", "glm-int4", "llama-f32", "llama-q8_0", "llama-q4_1"]


# ---------------------------------------------------------------- pure helpers (tested in tests/benchmarks)

@dataclass
class StreamResult:
    tokens: int
    started: float  # perf_counter when the request was sent
    first_token: float  # perf_counter of the first text chunk
    finished: float  # perf_counter of the last chunk

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def ttft(self) -> float:
        return self.first_token - self.started


@dataclass
class LevelStats:
    streams: int
    requests: int
    tokens: int
    wall_s: float
    aggregate_tok_s: float
    median_stream_tok_s: float
    median_ttft_s: float


def summarize(streams: int, results: list[StreamResult], wall_s: float) -> LevelStats:
    """Aggregate tok/s over the wave's wall time; per-stream rates and TTFT as medians over the requests."""
    if not results:
        raise ValueError("no results to summarize")
    if wall_s <= 0:
        raise ValueError("wall time must be positive")
    tokens = sum(r.tokens for r in results)
    per_stream = [r.tokens / r.seconds for r in results if r.seconds > 0]
    return LevelStats(streams=streams, requests=len(results), tokens=tokens, wall_s=wall_s,
                      aggregate_tok_s=tokens / wall_s,
                      median_stream_tok_s=statistics.median(per_stream) if per_stream else 0.0,
                      median_ttft_s=statistics.median(r.ttft for r in results))


def llama_context_size(parallel: int, prompt_tokens: int, max_tokens: int) -> int:
    """llama-server splits -c evenly over its -np slots: each slot needs prompt + answer, rounded up to 256."""
    per_slot = -(-(prompt_tokens + max_tokens) // 256) * 256
    return parallel * per_slot


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError(f"stream levels must be positive integers: {text!r}")
    return levels


def parse_configs(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    return names


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per server, a column pair (aggregate / median per stream) per stream level."""
    levels = sorted({lv["streams"] for r in rows for lv in r["levels"]})
    head = ["server, weights", "weight MB", "batch-1 bound tok/s"]
    for n in levels:
        head += [f"{n} stream{'s' if n > 1 else ''} tok/s", f"{n}: median per stream"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], f"{r['weight_bytes'] / 1e6:.0f}", f"{r['bound_tok_s']:.1f}"]
        by_level: dict[int, list[dict]] = {}
        for lv in r["levels"]:
            by_level.setdefault(lv["streams"], []).append(lv)
        for n in levels:
            runs = by_level.get(n, [])
            cells += [" / ".join(f"{x['aggregate_tok_s']:.1f}" for x in runs) or "-",
                      " / ".join(f"{x['median_stream_tok_s']:.1f}" for x in runs) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_gguf() -> Path:
    sys.path.insert(0, str(REPO))
    from model.loader import default_model_gguf

    return default_model_gguf()


def ensure_ggufs(llama_dir: Path, gguf_dir: Path, types: set[str]) -> dict[str, Path]:
    """The shipped Q4_1 file, plus F32 / Q8_0 requantized from it once (kept in gguf_dir, outside the repo)."""
    shipped = default_gguf()
    files = {"Q4_1": shipped}
    gguf_dir.mkdir(parents=True, exist_ok=True)
    for t in sorted(types - {"Q4_1"}):
        out = gguf_dir / f"{shipped.stem.rsplit('.', 1)[0]}.{t}.gguf"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            subprocess.run([str(llama_dir / "bin" / "llama-quantize"), "--allow-requantize", str(shipped), str(tmp), t],
                           check=True, stdout=subprocess.DEVNULL)
            tmp.rename(out)
        files[t] = out
    return files


@dataclass
class Server:
    config: PeerConfig
    port: int
    process: subprocess.Popen
    log_path: Path
    weight_bytes: int = 0
    model: str = ""
    label: str = ""
    levels: list[LevelStats] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def server_command(cfg: PeerConfig, port: int, args: argparse.Namespace, ggufs: dict[str, Path]) -> list[str]:
    max_streams = max(args.streams)
    if cfg.kind == "glmserve":
        return [sys.executable, "-m", "server.cli", "serve", "--model", "default", "--host", "127.0.0.1",
                "--port", str(port), "--dtype", cfg.dtype, "--quantization", cfg.quantization,
                "--num-threads", str(args.threads), "--max-num-seqs", str(max(32, max_streams)),
                "--kv-cache-memory", args.glm_kv_cache_memory, *cfg.extra_args]
    ctx = llama_context_size(max_streams, PROMPT_TOKEN_BUDGET, args.max_tokens)
    return [str(args.llama_dir / "bin" / "llama-server"), "-m", str(ggufs[cfg.gguf_type]), "--host", "127.0.0.1",
            "--port", str(port), "--threads", str(args.threads), "--threads-batch", str(args.threads),
            "-np", str(max_streams), "-c", str(ctx), "--cont-batching", "--no-webui"]


def start_server(cfg: PeerConfig, args: argparse.Namespace, ggufs: dict[str, Path]) -> Server:
    port = free_port()
    log_path = args.log_dir / f"{cfg.name}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(server_command(cfg, port, args, ggufs), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return Server(cfg, port, process, log_path)


def wait_ready(server: Server, deadline_s: float) -> None:
    """Health 200 and a listed model; a server that exits or never gets there fails the run with its log."""
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < end:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.config.name} exited ({server.process.returncode}); log:\n"
                                   + server.log_path.read_text()[-3000:])
            try:
                # glmserve: /ready (model loaded and self-test passed); llama-server: /health (model loaded)
                probe = "/ready" if server.config.kind == "glmserve" else "/health"
                if client.get(f"{server.base}{probe}").status_code == 200:
                    data = client.get(f"{server.base}/v1/models").json()["data"][0]
                    server.model = str(data["id"])
                    server.weight_bytes = int(data.get("weight_bytes") or 0)
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
    raise RuntimeError(f"{server.config.name} not ready after {deadline_s:.0f} s; log: {server.log_path}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- load generator

async def one_stream(client: httpx.AsyncClient, base: str, model: str, index: int, max_tokens: int) -> StreamResult:
    body = {"model": model, "messages": chat_messages(index), "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = finished = 0.0
    chunks = 0
    usage_tokens = None
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base}: HTTP {response.status_code}: {(await response.aread())[:500]!r}")
        async for event in aiter_sse(response):
            if chat_delta_text(event):
                now = time.perf_counter()
                first = first or now
                finished = now
                chunks += 1
            usage = event.get("usage")
            if usage and usage.get("completion_tokens"):
                usage_tokens = int(usage["completion_tokens"])
    if not chunks:
        raise RuntimeError(f"{base}: a stream returned no text")
    # The server's own token count where it sends one; a text chunk per token otherwise.
    return StreamResult(usage_tokens if usage_tokens is not None else chunks, started, first, finished)


async def run_level(base: str, model: str, streams: int, max_tokens: int, single_requests: int) -> LevelStats:
    """One wave at a stream level: `streams` requests at once, or `single_requests` one after another at 1."""
    # a fresh connection per request: llama-server closed an idle kept-alive connection just as the next
    # one-at-a-time request reused it ("Server disconnected without sending a response", 16:18 UTC run)
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        if streams == 1:
            results = [await one_stream(client, base, model, i, max_tokens) for i in range(single_requests)]
        else:
            results = list(await asyncio.gather(*(one_stream(client, base, model, i, max_tokens) for i in range(streams))))
        wall = time.perf_counter() - start
    return summarize(streams, results, wall)


def check_idle(servers: list[Server], seconds: float = 2.0) -> dict[str, float]:
    """CPU share each idle server takes over a short window: a spinning idle server would tax the others."""
    before = {s.config.name: process_cpu_seconds(s.process.pid) for s in servers}
    time.sleep(seconds)
    return {s.config.name: (process_cpu_seconds(s.process.pid) - before[s.config.name]) / seconds for s in servers}


def label(server: Server) -> str:
    cfg = server.config
    if cfg.kind == "llama":
        return f"llama.cpp server, {cfg.gguf_type}{' (shipped file)' if cfg.gguf_type == 'Q4_1' else ''}"
    act = "fp32" if cfg.dtype == "float32" else "bf16"
    flags = "".join(f" {a}" for a in cfg.extra_args)
    if cfg.quantization == "none":
        return f"glmserve {act}{flags}"
    weights = {"int8": "int8", "auto": "int4 (Q4_1 as stored)"}.get(cfg.quantization, cfg.quantization)
    return f"glmserve {weights}, {act} activations{flags}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=parse_configs, default=DEFAULT_CONFIGS)
    ap.add_argument("--streams", type=parse_levels, default=[1, 32], help="stream levels, e.g. 1,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--single-requests", type=int, default=2, help="sequential requests at the 1-stream level")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole alternation this many times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--glm-kv-cache-memory", default="512MiB")
    ap.add_argument("--llama-dir", type=Path, default=DEFAULT_LLAMA_DIR, help="build_llama_cpp.sh's --prefix")
    ap.add_argument("--gguf-dir", type=Path, default=None, help="where F32 / Q8_0 files go (default LLAMA_DIR/gguf)")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/bench_peers"))
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)

    from benchmarks.host_limits import measure  # torch only here: the load generator itself needs none

    import torch

    torch.set_num_threads(args.threads)
    limits = measure()
    print(limits.describe(), flush=True)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)", flush=True)

    configs = [CONFIGS[n] for n in args.configs]
    llama_types = {c.gguf_type for c in configs if c.kind == "llama"}
    ggufs = ensure_ggufs(args.llama_dir, args.gguf_dir or args.llama_dir / "gguf", llama_types) if llama_types else {}

    servers: list[Server] = []
    try:
        for cfg in configs:  # one at a time: loading is CPU-heavy and would slow the next one's start
            server = start_server(cfg, args, ggufs)
            servers.append(server)
            wait_ready(server, args.ready_timeout)
            if cfg.kind == "llama":
                server.weight_bytes = ggufs[cfg.gguf_type].stat().st_size
            server.label = label(server)
            # warm-up outside the figures: a short answer alone and a full wave of short answers
            asyncio.run(run_level(server.base, server.model, 1, 8, 1))
            asyncio.run(run_level(server.base, server.model, max(args.streams), 8, 1))
            print(f"ready: {server.label}: {server.weight_bytes / 1e6:.0f} MB of weights, bound "
                  f"{limits.batch1_bound_tok_s(server.weight_bytes):.1f} tok/s at batch 1, "
                  f"RSS {rss_mb(server.process.pid):.0f} MB", flush=True)
        idle = check_idle(servers)
        print("idle CPU share per server: " + ", ".join(f"{k} {v:.2f}" for k, v in idle.items()), flush=True)

        for r in range(args.rounds):
            for streams in args.streams:
                for server in servers:  # alternate: each level runs on every server before the next level
                    stats = asyncio.run(run_level(server.base, server.model, streams, args.max_tokens,
                                                          args.single_requests))
                    server.levels.append(stats)
                    print(f"round {r + 1} {server.config.name:>14} {streams:>3} streams: "
                          f"{stats.aggregate_tok_s:7.1f} tok/s aggregate, {stats.median_stream_tok_s:6.1f} median per "
                          f"stream, TTFT {stats.median_ttft_s * 1000:.0f} ms ({stats.tokens} tokens in "
                          f"{stats.wall_s:.1f} s)", flush=True)
    finally:
        for server in servers:
            stop_server(server)

    rows = [{"config": s.config.name, "label": s.label, "weight_bytes": s.weight_bytes,
             "bound_tok_s": limits.batch1_bound_tok_s(s.weight_bytes), "levels": [asdict(x) for x in s.levels]}
            for s in servers]
    print()
    print(limits.describe())
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"host": asdict(limits), "idle_cpu_share": idle, "servers": rows,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()

"""`glmserve serve`: flags -> Settings -> engine -> uvicorn.

    glmserve serve --model default --host 127.0.0.1 --port 8000
    python -m server --model /path/to/hf_dir --api-key sk-1 --api-key sk-2 --max-queue 64

Every flag is also an environment variable: --max-num-seqs 8 == GLMSERVE_MAX_NUM_SEQS=8
(GLMSERVE_API_KEY takes a comma-separated list). Flags win over the environment.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.settings import Settings

B = argparse.BooleanOptionalAction
MAX_HEADER_BYTES = 64 * 1024  # request line + headers


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: only flags actually given reach Settings, so the environment fills in the rest
    p = argparse.ArgumentParser(prog="glmserve serve", argument_default=argparse.SUPPRESS,
                                description="Serve a model over the OpenAI API.")
    p.add_argument("--model", help="'default', an HF checkpoint dir or a .gguf file")
    p.add_argument("--served-model-name", help="the id clients send as `model` (default: from --model)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--api-key", action="append", help="accepted Bearer key; repeat for several")
    p.add_argument("--api-key-file", help="file with one accepted key per line")
    p.add_argument("--metrics-auth", action=B, help="require an API key on /metrics too")
    p.add_argument("--cors-origin", dest="cors_origins", action="append",
                   help="allow browser calls from this origin (repeat for several); default: CORS off")
    p.add_argument("--max-model-len", type=int, help="context length served (prompt + output)")
    p.add_argument("--max-num-seqs", type=int, help="sequences decoded together")
    p.add_argument("--max-num-batched-tokens", type=int, help="tokens per engine step")
    p.add_argument("--max-queue", type=int, help="admitted requests without output yet; beyond: 429")
    p.add_argument("--max-request-bytes", type=int, help="request body limit; beyond: 413")
    p.add_argument("--write-stall-timeout", type=float,
                   help="cut a response whose client has not read for this many seconds (0: never; default 30)")
    p.add_argument("--header-timeout", type=float,
                   help="close a connection that has not sent a request's headers within this many seconds (10)")
    p.add_argument("--task-max-concurrent-chunks", type=int,
                   help="engine requests one /v1/summarize or /v1/translate request runs at once (2)")
    p.add_argument("--task-max-input-chars", type=int,
                   help="longest text /v1/summarize and /v1/translate accept (500000 characters)")
    p.add_argument("--kv-cache-memory", help="KV cache size, e.g. 512MiB or 2GiB (default: share of free memory)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--enforce-eager", action=B, help="no CUDA graphs / compiled decode")
    p.add_argument("--num-threads", type=int,
                   help="torch threads for the engine; 1 is faster when other processes share the cores")
    p.add_argument("--speculative-tokens", type=int,
                   help="n-gram speculative decoding (greedy and unseeded sampled requests): tokens proposed per "
                        "step (0: off; 4 is a good start on CPU)")
    p.add_argument("--cache-dir", help="cache for dequantized GGUF weights (default: ~/.cache/glmserve)")
    p.add_argument("--reasoning-parser", choices=["auto", "none", "glm45", "deepseek_r1", "qwen3"],
                   help="split <think> reasoning into reasoning_content (auto: from the chat template)")
    p.add_argument("--drain-timeout", type=float, help="seconds running requests get after SIGTERM")
    p.add_argument("--timings", action=B, help="the `timings` object on responses (--no-timings: off)")
    p.add_argument("--self-test", choices=["off", "report", "require"], help="start-up self-test mode")
    p.add_argument("--sse-ping-interval", type=float, help="seconds between SSE keep-alive comments")
    p.add_argument("--log-prompts", action=B, help="include prompt text in request log lines")
    p.add_argument("--log-level")
    p.add_argument("--web-dir", help="static web page directory served at / (default: clients/web)")
    return p


def main(argv: list[str] | None = None) -> int:
    from server.logs import configure_logging
    from server.settings import Settings

    args = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as e:
        print(f"glmserve serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return serve(settings)


def build_app(settings: "Settings") -> "FastAPI":
    """Settings -> loaded engine -> app (the engine loop starts with the app's lifespan)."""
    from model import AsyncEngine, EngineConfig
    from server.app import create_app

    engine_config = EngineConfig(max_num_seqs=settings.max_num_seqs,
                                 max_num_batched_tokens=settings.max_num_batched_tokens,
                                 kv_cache_memory=settings.kv_cache_memory, max_model_len=settings.max_model_len,
                                 device=settings.device, dtype=settings.dtype, enforce_eager=settings.enforce_eager,
                                 num_threads=settings.num_threads,
                                 num_speculative_tokens=settings.speculative_tokens)
    logging.getLogger("glmserve.server").info("loading model", extra={"fields": {"model": settings.model}})
    return create_app(settings, AsyncEngine.from_model(settings.model, engine_config, cache_dir=settings.cache_dir))


def serve(settings: "Settings") -> int:
    import uvicorn

    from server.lifecycle import DrainingServer

    app = build_app(settings)
    # h11, not httptools: httptools has no limit on header size, so one unauthenticated client could
    # make the process hold hundreds of MiB of header bytes; h11 answers 400 past MAX_HEADER_BYTES.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on", http="h11",
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    server = DrainingServer(config, app.state.glm)
    server.run()
    return server.exit_code  # 0 after a drain; ENGINE_DEAD_EXIT_CODE if the engine loop died


if __name__ == "__main__":
    sys.exit(main())

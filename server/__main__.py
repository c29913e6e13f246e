"""`glmserve serve`: flags -> Settings -> engine -> uvicorn.

    glmserve serve --model default --host 127.0.0.1 --port 8000
    python -m server --model /path/to/hf_dir --api-key sk-1 --api-key sk-2 --max-queue 64

Every flag is also an environment variable: --max-num-seqs 8 == GLMSERVE_MAX_NUM_SEQS=8
(GLMSERVE_API_KEY takes a comma-separated list). Flags win over the environment.
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
import types
import typing
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.settings import Settings

B = argparse.BooleanOptionalAction
MAX_HEADER_BYTES = 64 * 1024  # request line + headers


def build_parser() -> argparse.ArgumentParser:
    """One flag per Settings field (server/settings.py: the server's own and EngineConfig's), with the
    field's type, help text and default."""
    from server.settings import Settings

    # SUPPRESS: only flags actually given reach Settings, so the environment fills in the rest
    p = argparse.ArgumentParser(prog="glmserve serve", argument_default=argparse.SUPPRESS,
                                description="Serve a model over the OpenAI API. Every flag is also a GLMSERVE_<NAME> "
                                            "environment variable.")
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra or {}
        names = [extra.get("flag") or "--" + name.replace("_", "-"), *extra.get("aliases", [])]
        default = info.get_default(call_default_factory=True)
        help_text = info.description if "default" in info.description else f"{info.description} (default: {default})"
        kind = {} if extra.get("size") else _argparse_kind(info.annotation)  # sizes: '512MiB', parsed by Settings
        p.add_argument(*names, dest=name, help=help_text, **kind)
    return p


def _argparse_kind(annotation: object) -> dict:
    """argparse's action/type/choices for a field's type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        return _argparse_kind(args[0])
    if annotation is bool:
        return {"action": B}
    if typing.get_origin(annotation) is list:
        return {"action": "append"}
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if len(args) == 1 and typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        return _argparse_kind(args[0])
    if annotation in (int, float):
        return {"type": annotation}
    return {}  # str, and sizes such as 512MiB that Settings parses


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
    from model import AdapterError, UnsupportedModelError

    try:
        return serve(settings)
    except UnsupportedModelError as e:  # a checkpoint we cannot serve: say why and what to do, no traceback
        print(f"glmserve serve: cannot serve {settings.model}: {e}", file=sys.stderr)
        return 2
    except AdapterError as e:  # a --lora NAME=DIR that does not fit the base
        print(f"glmserve serve: cannot serve a --lora adapter: {e}", file=sys.stderr)
        return 2


def build_app(settings: "Settings") -> "FastAPI":
    """Settings -> loaded engine -> app (the engine loop starts with the app's lifespan)."""
    from model import AsyncEngine
    from server.app import create_app

    from server.lora import startup_adapters

    engine_config = settings.engine_config()
    logging.getLogger("glmserve.server").info("loading model", extra={"fields": {"model": settings.model}})
    engine = AsyncEngine.from_model(settings.model, engine_config, cache_dir=settings.cache_dir)
    startup_adapters(settings, engine)  # --lora NAME=DIR
    return create_app(settings, engine)


def serve(settings: "Settings") -> int:
    import uvicorn

    from server.http_protocol import header_timeout_protocol
    from server.lifecycle import DrainingServer

    app = build_app(settings)
    # The model, tokenizer and libraries loaded by now are ~850k objects that live as long as the
    # process. A full collection walks all of them, holding the GIL for a few hundred ms, so every
    # request that allocated enough to trigger one stalled the event loop (/health polls of 250-330
    # ms during large bodies, issue 21). Frozen, the collector only walks what requests allocate.
    gc.collect()
    gc.freeze()
    # h11, not httptools: httptools has no limit on header size, so one unauthenticated client could
    # make the process hold hundreds of MiB of header bytes; h11 answers 400 past MAX_HEADER_BYTES.
    # Its subclass closes a connection whose headers take longer than --header-timeout (slowloris);
    # idle kept-alive connections close after 5 s. docs/SECURITY.md has what a proxy should add.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on",
                            http=header_timeout_protocol(settings.header_timeout, settings.body_timeout),
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_keep_alive=5)
    server = DrainingServer(config, app.state.glm)
    server.run()
    return server.exit_code  # 0 after a drain; ENGINE_DEAD_EXIT_CODE if the engine loop died


if __name__ == "__main__":
    sys.exit(main())

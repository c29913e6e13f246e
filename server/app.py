"""create_app(settings, engine): the FastAPI application around a started-or-not AsyncEngine.

    app = create_app(Settings(model="default"), AsyncEngine.from_model("default", EngineConfig()))

Routers: /v1 (OpenAI API, API-key protected), task endpoints from server/routes/tasks.py when that
module exists (same protection), /health and /ready (open), /metrics (open unless --metrics-auth),
OpenAPI at /docs, and the web page (clients/web) at /. CORS headers only for --cors-origin origins;
the test-only fault routes (server/faults.py) only with GLMSERVE_TEST_FAULTS=1.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from model import AsyncEngine
from server import faults, lora
from server.auth import APIKeyChecker
from server.errors import install_error_handlers
from server.metrics import ServerMetrics
from server.middleware import RequestMiddleware
from server.routes import anthropic, embeddings, health, openai, responses, tokenize
from server.selftest import run_self_test
from server.serving.admission import CLAMP_HEADER
from server.serving.openai.choice import server_reasoning_format
from server.settings import Settings
from server.state import VERSION, ServerState

log = logging.getLogger("glmserve.server")
TASKS_MODULE = "server.routes.tasks"


def _tasks_router() -> APIRouter | None:
    """The task endpoints (/v1/summarize, /v1/translate) plug in by existing: server/routes/tasks.py
    with a module-level `router`."""
    if importlib.util.find_spec(TASKS_MODULE) is None:
        return None
    return getattr(importlib.import_module(TASKS_MODULE), "router", None)


def create_app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    metrics = ServerMetrics(settings.model_name)
    metrics.attach_engine(engine.stats)
    state = ServerState(settings, engine, metrics)
    require_key = APIKeyChecker(settings.all_api_keys())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        self_test = asyncio.create_task(run_self_test(state)) if settings.self_test != "off" else None
        log.info("serving", extra={"fields": {"model": state.model_name, "path": engine.model_path,
                                              "max_model_len": state.max_model_len,
                                              "api_keys": len(settings.all_api_keys())}})
        log.info("reasoning parser", extra={"fields": {"reasoning_parser": server_reasoning_format(state)[1]}})
        try:
            yield
        finally:
            state.draining = True
            if self_test is not None:
                self_test.cancel()
                with contextlib.suppress(BaseException):
                    await self_test
            engine.shutdown()

    app = FastAPI(title="glmserve", version=VERSION, lifespan=lifespan,
                  description="OpenAI-compatible API over a ChatGLM-family model.")
    app.state.glm = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai.router, dependencies=[Depends(require_key)])
    # the other APIs clients speak: OpenAI Responses and embeddings, Anthropic Messages, vLLM's /tokenize
    for api in (responses, embeddings, anthropic, tokenize):
        app.include_router(api.router, dependencies=[Depends(require_key)])
    app.include_router(lora.router)  # its own admin-key check (server/lora.py)
    tasks = _tasks_router()
    if tasks is not None:
        app.include_router(tasks, dependencies=[Depends(require_key)])

    @app.get("/metrics", tags=["health"], dependencies=[Depends(require_key)] if settings.metrics_auth else [])
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if faults.enabled():  # test-only fault injection, off unless GLMSERVE_TEST_FAULTS=1
        app.include_router(faults.router)
    web_dir = settings.resolved_web_dir()
    if web_dir:
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    app.add_middleware(RequestMiddleware, state=state)
    if settings.cors_origins:  # off unless configured (the web page at / is same-origin); outermost, so
        # preflights need no API key and 413/429/503 answers carry the headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After", CLAMP_HEADER])
    return app

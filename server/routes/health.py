"""Probes: /health (the process and its engine loop are alive), /ready (serving: model loaded, loop
alive, self-test done, not draining). Both are open without an API key."""
from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = request.app.state.glm
    alive = state.engine.is_alive
    return JSONResponse({"status": "ok" if alive else "engine_dead"}, status_code=200 if alive else 503)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.glm
    ok, status = state.readiness()
    body = {"status": status, "model": state.model_name, "max_model_len": state.max_model_len,
            "self_test": state.self_test.to_dict(), "engine": asdict(state.engine.stats()),
            "queued": state.num_queued, "active": state.num_active}
    return JSONResponse(body, status_code=200 if ok else 503)

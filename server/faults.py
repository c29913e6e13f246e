"""Test-only fault injection. Mounted only when GLMSERVE_TEST_FAULTS=1 and answering only loopback
clients; not in the OpenAPI schema. Off by default, so a production server has no such route.

    GLMSERVE_TEST_FAULTS=1 python -m server --model default
    curl -X POST http://127.0.0.1:8000/_test/faults/kill-engine

kill-engine makes the engine loop's next step raise, which ends the loop thread the way a CUDA error
or a scheduler bug would; tests then check that streams end, /ready turns 503 and the process exits
with a non-zero code (server/lifecycle.py).
"""
from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.errors import APIError

ENV = "GLMSERVE_TEST_FAULTS"
LOOPBACK = {"127.0.0.1", "::1"}

router = APIRouter(prefix="/_test/faults", include_in_schema=False)


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def _require_loopback(request: Request) -> None:
    if request.client is None or request.client.host not in LOOPBACK:
        raise APIError(403, "fault injection answers loopback clients only", code="forbidden")


@router.post("/kill-engine")
async def kill_engine(request: Request) -> JSONResponse:
    _require_loopback(request)
    llm_engine = request.app.state.glm.engine.engine  # the LLMEngine the loop thread steps

    def failing_step() -> list:
        raise RuntimeError(f"engine loop killed on purpose ({ENV})")

    llm_engine.step = failing_step  # the loop dies on its next step, i.e. as soon as work is pending
    return JSONResponse({"killed": "on the next engine step"})

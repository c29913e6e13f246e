"""Task endpoints: /v1/summarize and /v1/translate (thin: parse, delegate). app.py includes this
router with the same API-key protection as the rest of /v1."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.protocol import ErrorResponse
from server.protocol.tasks import SummarizeRequest, Summary, TranslateRequest, Translation
from server.serving.tasks.summarize import create_summary
from server.serving.tasks.translate import create_translation

router = APIRouter(prefix="/v1", tags=["tasks"])
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


@router.post("/summarize", response_model=Summary, responses=ERRORS,
             summary="Summarize text of any length; `stream: true` answers with summary.chunk events")
async def summarize(body: SummarizeRequest, request: Request) -> Response:
    return await create_summary(request.app.state.glm, request, body)


@router.post("/translate", response_model=Translation, responses=ERRORS,
             summary="Translate text of any length; `stream: true` answers with translation.chunk events")
async def translate(body: TranslateRequest, request: Request) -> Response:
    return await create_translation(request.app.state.glm, request, body)

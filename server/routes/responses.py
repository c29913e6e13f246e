"""POST /v1/responses, the OpenAI Responses API (thin: parse, delegate to server/serving/openai/responses.py)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.protocol import ErrorResponse
from server.protocol.responses import ResponseObject, ResponsesRequest
from server.serving.openai.responses import create_response

router = APIRouter(prefix="/v1", tags=["openai"])
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


@router.post("/responses", response_model=ResponseObject, responses=ERRORS,
             summary="Responses API (stateless); `stream: true` answers with response.* events")
async def responses(body: ResponsesRequest, request: Request) -> Response:
    return await create_response(request.app.state.glm, request, body)

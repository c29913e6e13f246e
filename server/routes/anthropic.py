"""The Anthropic Messages API: POST /v1/messages and /v1/messages/count_tokens (thin: parse, delegate to
server/serving/openai/anthropic.py). Keys may come as `x-api-key` too; errors have Anthropic's shape."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.protocol.anthropic import (AnthropicErrorResponse, CountTokensRequest, CountTokensResponse, MessageObject,
                                       MessagesRequest)
from server.serving.openai.anthropic import count_tokens, create_message

router = APIRouter(prefix="/v1", tags=["anthropic"])
ERRORS = {status: {"model": AnthropicErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


@router.post("/messages", response_model=MessageObject, responses=ERRORS,
             summary="Anthropic Messages; `stream: true` answers with message_start ... message_stop events")
async def messages(body: MessagesRequest, request: Request) -> Response:
    return await create_message(request.app.state.glm, request, body)


@router.post("/messages/count_tokens", response_model=CountTokensResponse, responses=ERRORS,
             summary="Prompt tokens a /v1/messages request with this body would use")
async def messages_count_tokens(body: CountTokensRequest, request: Request) -> CountTokensResponse:
    return await count_tokens(request.app.state.glm, body)

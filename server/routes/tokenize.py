"""POST /tokenize and /detokenize (vLLM's shapes; thin: parse, delegate). API-key protected like /v1."""
from __future__ import annotations

from fastapi import APIRouter, Request

from server.protocol import ErrorResponse
from server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.serving.openai.tokenize import detokenize, tokenize

router = APIRouter(tags=["tokenizer"])
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413)}


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS,
             summary="Token ids of a prompt, or of chat messages with the chat template (and tools) applied")
async def tokenize_route(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    return tokenize(request.app.state.glm, body)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS, summary="Text of token ids")
async def detokenize_route(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    return detokenize(request.app.state.glm, body)

"""POST /v1/embeddings (thin: parse, delegate to server/serving/openai/embeddings.py)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.protocol import ErrorResponse
from server.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from server.serving.openai.embeddings import create_embeddings

router = APIRouter(prefix="/v1", tags=["openai"])
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


@router.post("/embeddings", response_model=EmbeddingResponse, responses=ERRORS,
             summary="Embeddings: mean of the final hidden states over each input's tokens, L2-normalized")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await create_embeddings(request.app.state.glm, request, body)

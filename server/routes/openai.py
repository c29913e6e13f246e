"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/models (thin: parse, delegate)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from server.errors import APIError
from server.protocol import (ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorResponse,
                             ModelCard, ModelList)
from server.serving.openai.chat import create_chat_completion
from server.serving.openai.completions import create_completion
from server.state import ServerState

router = APIRouter(prefix="/v1", tags=["openai"])
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


def get_state(request: Request) -> ServerState:
    return request.app.state.glm


@router.post("/chat/completions", response_model=ChatCompletion, responses=ERRORS,
             summary="Chat completion; `stream: true` answers with chat.completion.chunk events")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await create_chat_completion(get_state(request), request, body)


@router.post("/completions", response_model=Completion, responses=ERRORS,
             summary="Text completion; `stream: true` answers with text_completion events")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await create_completion(get_state(request), request, body)


def _card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.model_name, created=int(state.started_at), root=state.engine.model_path,
                     max_model_len=state.max_model_len, provenance=state.engine.provenance or None,
                     quantization=state.engine.quantization, weight_bytes=state.engine.weight_bytes)


def _adapter_cards(state: ServerState) -> list[ModelCard]:
    """One card per LoRA adapter, its parent the base (server/lora.py)."""
    return [ModelCard(id=a.name, created=int(a.loaded_at), root=a.path, parent=state.model_name,
                      max_model_len=state.max_model_len, provenance=a.provenance or None)
            for a in state.engine.loras()]


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> ModelList:
    state = get_state(request)
    return ModelList(data=[_card(state), *_adapter_cards(state)])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, request: Request) -> ModelCard:
    state = get_state(request)
    adapter = next((card for card in _adapter_cards(state) if card.id == model_id), None)
    if adapter is not None:
        return adapter
    if model_id not in state.settings.accepted_model_names():
        raise APIError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")
    return _card(state)

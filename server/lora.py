"""LoRA adapters at the HTTP edge: `model: NAME` picks one, /v1/models lists them, and (behind
--enable-lora-runtime-updates) POST /v1/load_lora_adapter and /v1/unload_lora_adapter change them.

    glmserve serve --model BASE --lora support=/adapters/support --lora legal=/adapters/legal

The adapter a request named is carried from `check_model` (server/serving/admission.py, which every
generating endpoint calls first) to `run_engine` in a context variable: each HTTP request runs in its own
task, so the choice never leaks between requests, and no endpoint has to thread it through by hand.

Who may change adapters: with no API key configured the update routes are open (they exist only with the
explicit flag); once keys are set, only a key given with --admin-key may call them (401 without a key,
403 with an ordinary one). A directory outside --lora-allowed-root is a 400.
"""
from __future__ import annotations

import contextvars
import os

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from model import AdapterError, AdapterInUse
from server.auth import APIKeyChecker, presented_key
from server.errors import APIError
from server.state import ServerState

ADAPTER: contextvars.ContextVar[str | None] = contextvars.ContextVar("glmserve_lora_adapter", default=None)

router = APIRouter(prefix="/v1", tags=["lora"])


class LoadLoRARequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadLoRARequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str | None = None  # accepted and ignored (vLLM's body carries it)


def parse_lora_flag(value: str) -> tuple[str, str]:
    """'NAME=DIR' -> (NAME, DIR)."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise AdapterError(f"--lora wants NAME=DIR, got {value!r}")
    return name.strip(), path.strip()


def adapter_names(state: ServerState) -> set[str]:
    return {a.name for a in state.engine.loras()}


def select_adapter(state: ServerState, requested: str | None) -> bool:
    """Records which adapter this request decodes with; False when `requested` names none."""
    if requested is not None and requested in adapter_names(state):
        ADAPTER.set(requested)
        return True
    ADAPTER.set(None)
    return False


def response_model_name(state: ServerState) -> str:
    """The `model` a response reports: the adapter's name when the request picked one (as vLLM does),
    else the base's served name."""
    return ADAPTER.get() or state.model_name


def check_path(state: ServerState, path: str) -> str:
    root = state.settings.lora_allowed_root
    real = os.path.realpath(path)
    if root is not None:
        allowed = os.path.realpath(root)
        if os.path.commonpath([real, allowed]) != allowed:
            raise APIError(400, f"lora_path {path!r} is outside --lora-allowed-root", param="lora_path",
                           code="lora_path_not_allowed")
    return real


def _require_admin(state: ServerState, request: Request) -> None:
    if not state.settings.enable_lora_runtime_updates:
        raise APIError(404, "runtime LoRA updates are off (start with --enable-lora-runtime-updates)",
                       code="lora_runtime_updates_disabled")
    admin = APIKeyChecker(state.settings.admin_key)
    if not (state.settings.all_api_keys() or admin.enabled):
        return  # an open server: nothing to protect with
    key = presented_key(request.headers.raw)
    if key is None:
        raise APIError(401, "Missing API key: send `Authorization: Bearer <admin key>`.", code="invalid_api_key")
    if not admin.enabled or not admin.is_valid(key):
        raise APIError(403, "changing LoRA adapters needs a key given with --admin-key", code="admin_key_required")


async def load_adapter(state: ServerState, name: str, path: str) -> dict:
    if name in state.settings.accepted_model_names():
        raise APIError(400, f"lora_name {name!r} is the base model's name", param="lora_name", code="invalid_lora_name")
    real = check_path(state, path)
    try:
        adapter = await state.engine.load_lora(name, real)
    except AdapterError as e:
        raise APIError(400, f"cannot load LoRA adapter {name!r}: {e}", param="lora_path", code="invalid_lora_adapter") from e
    return adapter.card()


@router.post("/load_lora_adapter", summary="Load a PEFT LoRA adapter under a name (--enable-lora-runtime-updates)")
async def load_lora_adapter(body: LoadLoRARequest, request: Request) -> dict:
    state: ServerState = request.app.state.glm
    _require_admin(state, request)
    if body.lora_name in adapter_names(state):
        raise APIError(400, f"an adapter named {body.lora_name!r} is already loaded", param="lora_name",
                       code="lora_already_loaded")
    card = await load_adapter(state, body.lora_name, body.lora_path)
    return {"object": "lora_adapter", "status": "loaded", **card}


@router.post("/unload_lora_adapter", summary="Unload a LoRA adapter (409 while requests use it)")
async def unload_lora_adapter(body: UnloadLoRARequest, request: Request) -> dict:
    state: ServerState = request.app.state.glm
    _require_admin(state, request)
    try:
        await state.engine.unload_lora(body.lora_name)
    except KeyError as e:
        raise APIError(404, f"no LoRA adapter named {body.lora_name!r} is loaded", param="lora_name",
                       code="model_not_found") from e
    except AdapterInUse as e:
        raise APIError(409, f"{e}; retry once they finish", param="lora_name", code="lora_adapter_in_use") from e
    return {"object": "lora_adapter", "status": "unloaded", "name": body.lora_name}


def startup_adapters(settings, engine) -> None:
    """--lora NAME=DIR flags, loaded before the server listens (a bad one stops the start, naming it)."""
    for value in settings.lora:
        name, path = parse_lora_flag(value)
        if name in settings.accepted_model_names():
            raise AdapterError(f"--lora {value}: {name!r} is the base model's name")
        if settings.lora_allowed_root is not None:
            allowed = os.path.realpath(settings.lora_allowed_root)
            if os.path.commonpath([os.path.realpath(path), allowed]) != allowed:
                raise AdapterError(f"--lora {value}: {path!r} is outside --lora-allowed-root")
        try:
            engine.call_on_loop(engine.engine.load_lora, name, path)
        except AdapterError as e:
            raise AdapterError(f"--lora {value}: {e}") from e

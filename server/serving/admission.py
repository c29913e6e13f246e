"""What is decided before a request reaches the engine: the model name, the token budget
(context_length_exceeded / clamping), and the SamplingParams (invalid values become 400s)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from model import SamplingParams, SamplingParamsError
from server.errors import APIError, bad_request
from server.lora import select_adapter
from server.state import ServerState

CLAMP_HEADER = "X-GLMServe-Max-Tokens-Clamped"


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_model(state: ServerState, requested: str | None) -> None:
    """404 for a model this server does not serve; a missing `model` means the served one. A loaded LoRA
    adapter's name picks that adapter for this request (server/lora.py)."""
    if select_adapter(state, requested):
        return
    if requested is not None and requested not in state.settings.accepted_model_names():
        raise APIError(404, f"The model `{requested}` does not exist. This server serves `{state.model_name}`.",
                       param="model", code="model_not_found")


@dataclass
class TokenBudget:
    max_tokens: int
    clamped: bool = False  # the client asked for more than fits after its prompt


def plan_max_tokens(state: ServerState, num_prompt_tokens: int, requested: int | None, param: str,
                    prompt_param: str, allow_zero: bool = False) -> TokenBudget:
    """The prompt must leave room for one token; max_tokens may not exceed the context on its own;
    a max_tokens that only overflows together with the prompt is clamped to what fits. `allow_zero`:
    a request that only scores its prompt may ask for no tokens."""
    limit = state.context_limit
    if num_prompt_tokens == 0:
        raise bad_request("the prompt is empty", param=prompt_param, code="invalid_prompt")
    if num_prompt_tokens >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your "
                       f"{prompt_param} resulted in {num_prompt_tokens} tokens, which leaves no room for a "
                       "completion. Please reduce the length of the input.",
                       param=prompt_param, code="context_length_exceeded")
    room = limit - num_prompt_tokens
    if requested is None:
        return TokenBudget(room)
    if requested == 0 and allow_zero:
        return TokenBudget(0)
    if requested < 1:
        raise bad_request(f"{param} must be at least 1, got {requested}", param=param)
    if requested > state.max_model_len:
        raise APIError(400, f"{param}={requested} is larger than this model's maximum context length of "
                       f"{state.max_model_len} tokens.", param=param, code="context_length_exceeded")
    if requested > room:
        return TokenBudget(room, clamped=True)
    return TokenBudget(requested)


def clamp_headers(budgets: list[TokenBudget]) -> dict[str, str]:
    """Present only when clamped; the value is the max_tokens actually used (the smallest one)."""
    clamped = [b.max_tokens for b in budgets if b.clamped]
    return {CLAMP_HEADER: str(min(clamped))} if clamped else {}


def sampling_params(state: ServerState, build: Callable[..., SamplingParams], max_tokens: int,
                    param_names: dict[str, str] | None = None, **extra: Any) -> SamplingParams:
    """Runs a schema's to_sampling_params; SamplingParamsError becomes a 400 naming the wire field."""
    try:
        params = build(max_tokens, **extra)
        # the engine checks this again for library callers, but only once the stream has started: the
        # server's check is what makes it a 400 before the first SSE event
        params.check_vocab(state.engine.model_config.vocab_size)
    except SamplingParamsError as e:
        param = (param_names or {}).get(e.param, e.param)
        raise bad_request(str(e), param=param) from e
    return params

"""The SSE events of the task endpoints, and the same text collected for a JSON answer.

    {"id": "sum-…", "object": "summary.chunk", "delta": "The council voted"}
    ...
    {"id": "sum-…", "object": "summary.chunk", "delta": "", "finish_reason": "stop" | "length", "usage": {...},
     "num_chunks": 3, "timings": {...}}
    [DONE]
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from server.lora import response_model_name
from server.serving.admission import sampling_params
from server.serving.respond import RequestContext
from server.serving.tasks.task_engine import check_task_input
from server.state import ServerState

Extra = dict[str, Any] | Callable[[], dict[str, Any]]


async def collect_text(deltas: AsyncIterator[str]) -> str:
    return "".join([delta async for delta in deltas])


async def task_events(state: ServerState, ctx: RequestContext, object_name: str, deltas: AsyncIterator[str],
                      extra: Extra, finish_reason: Callable[[], str]) -> AsyncIterator[dict[str, Any]]:
    """One event per delta, then a closing event with usage and `finish_reason()` (asked once the text
    is complete: "length" when the request's max_tokens cut it); `extra` (or what it returns then)
    adds fields to that closing event."""
    async for delta in deltas:
        if delta:
            yield {"id": ctx.request_id, "object": object_name, "delta": delta}
    last: dict[str, Any] = {"id": ctx.request_id, "object": object_name, "delta": "",
                            "finish_reason": finish_reason(),
                            "created": ctx.created, "model": response_model_name(state),
                            "usage": ctx.trace.usage().model_dump()}
    last.update(extra() if callable(extra) else extra)
    if state.settings.timings:
        last["timings"] = ctx.trace.timings().model_dump()
    yield last


def check_sampling(state: ServerState, body: Any) -> None:
    """Out-of-range sampling values are a 400 before any work starts (the service builds the real
    SamplingParams per generation, with their own max_tokens); so is a text over the size limit."""
    check_task_input(state, body.text)
    sampling_params(state, lambda n, **_: body.to_sampling_params(n), 1)

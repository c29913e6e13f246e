"""The shape every generation endpoint shares: admit -> trace -> JSON body or SSE stream -> close.

Task endpoints (summarize, translate) use the same three calls as chat and completions:

    ctx = begin_request(state, request, new_request_id("sum"), body.stream)
    outputs = run_engine(state, ctx.ticket, ctx.trace, ctx.request_id, prompt_ids, params)
    return stream_response(state, ctx, my_chunks(outputs), headers)   # or: try/finally ctx.close()
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import Request

from server.errors import APIError
from server.serving.trace import RequestTrace
from server.sse import OpenAIEventStream
from server.state import ServerState, Ticket


@dataclass
class RequestContext:
    request_id: str
    ticket: Ticket
    trace: RequestTrace
    created: int = field(default_factory=lambda: int(time.time()))
    error: APIError | None = None

    def fail(self, error: APIError) -> None:
        self.error = error
        self.trace.log["error"] = error.code or error.type
        self.trace.log["error_status"] = error.status

    def close(self) -> None:
        """Idempotent: frees the admission slot and settles metrics and the log line."""
        self.ticket.close()
        self.trace.close("error" if self.error is not None else "abort")


def request_log(request: Request) -> dict[str, Any]:
    """The log-line fields of this request, filled by serving code and written by the middleware."""
    log = getattr(request.state, "glm_log", None)
    if log is None:
        log = {}
        request.state.glm_log = log
    return log


def begin_request(state: ServerState, request: Request, request_id: str, stream: bool,
                  prompt: Any = None) -> RequestContext:
    """Admission (429 / 503 raise here) once the request is known to be valid."""
    ticket = state.admit()
    ticket.fairness_key = getattr(request.state, "fairness_key", None)  # set by server/middleware.py
    log = request_log(request)
    log.update(model=state.model_name, id=request_id, stream=stream)
    if prompt is not None:  # only with --log-prompts
        log["prompt"] = prompt
    return RequestContext(request_id, ticket, RequestTrace(state.metrics, log))


def stream_response(state: ServerState, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]],
                    headers: dict[str, str] | None = None) -> OpenAIEventStream:
    return OpenAIEventStream(chunks, ping_interval=state.settings.sse_ping_interval, headers=headers,
                             on_close=ctx.close, on_error=ctx.fail)


def finish_json(state: ServerState, body: BaseModel, headers: dict[str, str] | None = None) -> JSONResponse:
    data = body.model_dump()
    if data.get("timings") is None:  # --no-timings: leave the field out entirely
        data.pop("timings", None)
    return JSONResponse(data, headers=headers)

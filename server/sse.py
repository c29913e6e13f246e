"""Server-sent events in OpenAI's framing (sse-starlette underneath).

Each chunk is one `data: {json}` event; the stream always ends with `data: [DONE]`. A failure after
the stream started cannot change the HTTP status any more, so it arrives as a last
`data: {"error": {...}}` event (what the openai SDK raises from) followed by [DONE]. Keep-alive
comments go out every --sse-ping-interval seconds, e.g. during a long prefill.
"""
from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Callable

from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.types import Message, Receive, Scope, Send

from server.errors import APIError

log = logging.getLogger("glmserve.server")

# Proxies (nginx, ingress) must pass every event through at once and never cache the stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# glmserve drains streams itself on SIGTERM (server/lifecycle.py): sse-starlette must not cut them.
AppStatus.disable_automatic_graceful_drain()


def encode(payload: dict[str, Any]) -> str:
    # ensure_ascii=False: Chinese goes out as UTF-8, a third of the bytes of \\u escapes
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


async def openai_events(chunks: AsyncIterator[dict[str, Any]], on_error: Callable[[APIError], None] | None = None,
                        ) -> AsyncIterator[dict[str, str]]:
    """Frames dict chunks as SSE `data:` events, with the error event and [DONE] at the end."""
    try:
        async for chunk in chunks:
            yield {"data": encode(chunk)}
    except APIError as e:
        if on_error:
            on_error(e)
        yield {"data": encode(e.body())}
    except Exception as e:  # noqa: BLE001 - the client must learn the stream failed
        log.exception("stream failed")
        err = APIError(500, f"internal error: {type(e).__name__}", code="internal_error")
        if on_error:
            on_error(err)
        yield {"data": encode(err.body())}
    yield {"data": "[DONE]"}


class ClosingEventStream(EventSourceResponse):
    """EventSourceResponse that runs `on_close` however the response ends (done, client gone,
    cancelled at shutdown), so admission slots are always given back. `events` are framed SSE dicts."""

    def __init__(self, events: AsyncIterator[dict[str, str]], *, ping_interval: float,
                 headers: dict[str, str] | None = None, on_close: Callable[[], None] | None = None) -> None:
        super().__init__(events, headers={**STREAM_HEADERS, **(headers or {})}, ping=ping_interval, sep="\n")
        self._on_close = on_close

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette opens an anyio cancel scope around every event even with no send timeout, which bounds
        # nothing; the server's middleware is what bounds a stalled write (--write-stall-timeout), so an event
        # goes straight out (no change in the event loop's CPU per token could be measured on this host)
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


class OpenAIEventStream(ClosingEventStream):
    """OpenAI's framing: `data:` events, the error event and [DONE] at the end."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], *, ping_interval: float,
                 headers: dict[str, str] | None = None, on_close: Callable[[], None] | None = None,
                 on_error: Callable[[APIError], None] | None = None) -> None:
        super().__init__(openai_events(chunks, on_error), ping_interval=ping_interval, headers=headers,
                         on_close=on_close)

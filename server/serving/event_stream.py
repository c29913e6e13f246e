"""Server-sent events with event names (`event: <type>` + `data: {json}`), as the OpenAI Responses API
and the Anthropic Messages API frame their streams. No `[DONE]` line: both end with their own final
event (`response.completed` / `message_stop`). A failure after the stream started arrives as one last
event built by `error_event` from the APIError (each API has its own error shape).

    return NamedEventStream(events, error_event=lambda e: ("error", {...}), ping_interval=15, on_close=ctx.close)
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable

from server.errors import APIError
from server.sse import ClosingEventStream, encode

log = logging.getLogger("glmserve.server")

Event = tuple[str, dict[str, Any]]  # (event name, payload)


async def named_events(events: AsyncIterator[Event], error_event: Callable[[APIError], Event],
                       on_error: Callable[[APIError], None] | None = None) -> AsyncIterator[dict[str, str]]:
    try:
        async for name, payload in events:
            yield {"event": name, "data": encode(payload)}
    except Exception as e:  # noqa: BLE001 - the client must learn the stream failed
        if not isinstance(e, APIError):
            log.exception("stream failed")
            e = APIError(500, f"internal error: {type(e).__name__}", code="internal_error")
        if on_error:
            on_error(e)
        name, payload = error_event(e)
        yield {"event": name, "data": encode(payload)}


class NamedEventStream(ClosingEventStream):
    """Named events; the failure event comes from `error_event` (the API's own error shape)."""

    def __init__(self, events: AsyncIterator[Event], *, error_event: Callable[[APIError], Event],
                 ping_interval: float, headers: dict[str, str] | None = None,
                 on_close: Callable[[], None] | None = None,
                 on_error: Callable[[APIError], None] | None = None) -> None:
        super().__init__(named_events(events, error_event, on_error), ping_interval=ping_interval, headers=headers,
                         on_close=on_close)

"""uvicorn's h11 protocol plus a deadline for a request's headers (slow clients, "slowloris").

uvicorn times out idle keep-alive connections (timeout_keep_alive) but not a connection that sends
its request line and headers slowly: one byte a second holds a connection, a file descriptor and a
protocol object for as long as the client likes. Here every request head must be complete within
`header_timeout` seconds of its first byte (of the connection, for the first request); otherwise the
connection is closed without an answer (nginx's client_header_timeout does the same with a 408).
Bodies are not covered: the body limit bounds their size, a reverse proxy their pace
(docs/SECURITY.md).

    config = uvicorn.Config(app, http=header_timeout_protocol(10.0), ...)
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout = 10.0  # seconds; header_timeout_protocol() makes a subclass with another value

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # IDLE: h11 has not seen a complete request head yet (a new connection, or the next request
        # of a kept-alive one); any other state means the head arrived
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self.logger.debug("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class uvicorn.Config(http=...) takes, with this header deadline."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": float(seconds)})

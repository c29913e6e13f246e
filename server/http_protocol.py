"""uvicorn's h11 protocol plus deadlines for a request's headers and body (slow clients, "slowloris").

uvicorn times out idle keep-alive connections (timeout_keep_alive) but not a connection that sends
its request line and headers slowly: one byte a second holds a connection, a file descriptor and a
protocol object for as long as the client likes. Here every request head must be complete within
`header_timeout` seconds of its first byte (of the connection, for the first request); otherwise the
connection is closed without an answer (nginx's client_header_timeout does the same with a 408).

Bodies: the middleware answers 408 `body_timeout` when a body it reads is not complete within
--body-timeout of its headers (server/middleware.py). This protocol is the backstop for a body
nobody reads (a GET with a Content-Length, a route that answered before reading): a connection whose
body is still arriving `body_timeout` + BODY_GRACE_S seconds after its head is closed. Without it,
every byte received re-arms uvicorn's keep-alive timer, so a trickled body held the connection forever.

    config = uvicorn.Config(app, http=header_timeout_protocol(10.0, 60.0), ...)
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


BODY_GRACE_S = 1.0  # the middleware's 408 goes first; this only closes what it did not


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout = 10.0  # seconds; header_timeout_protocol() makes a subclass with other values
    body_timeout = 60.0

    _header_deadline: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # IDLE: h11 has not seen a complete request head yet (a new connection, or the next request
        # of a kept-alive one); any other state means the head arrived
        state = self.conn.their_state
        if state is h11.IDLE and not self.transport.is_closing():
            self._arm()
        else:
            self._disarm()
        # SEND_BODY: the head is in, the body is not complete yet
        if state is h11.SEND_BODY and not self.transport.is_closing():
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.body_timeout + BODY_GRACE_S, self._body_expired)
        else:
            self._disarm_body()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _disarm_body(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_expired(self) -> None:
        self._body_deadline = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.logger.debug("closing a connection whose request body took over %s s", self.body_timeout)
            self.transport.close()

    def _expired(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self.logger.debug("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()


def header_timeout_protocol(seconds: float, body_seconds: float = 60.0) -> type[HeaderTimeoutProtocol]:
    """The protocol class uvicorn.Config(http=...) takes, with these header and body deadlines."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout": float(seconds), "body_timeout": float(body_seconds)})

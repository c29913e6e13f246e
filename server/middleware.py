"""The outermost layer (pure ASGI, so streams pass through untouched): X-Request-ID, 503 for new work
while draining, the API key (401, and 400 for duplicate key headers, server/auth.py) before a byte of
the body is read, the request body limit (413) and its bounded JSON checks (400,
server/body_checks.py), the body-read deadline (408 when a body has not arrived within
--body-timeout), the write-stall limit (a response the client stops reading is cut after
--write-stall-timeout seconds, so its engine work is aborted), in-flight counting for the drain,
HTTP metrics and the one structured log line per request, written when the last byte of the response
has gone out.

Every request also gets a fairness key in `scope["state"]`: a digest of its API key, or its client
address when it has none; the scheduler shares sequence slots between keys (model/engine/scheduler.py)."""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import APIKeyChecker, presented_key, takes_x_api_key
from server.body_checks import json_body_problem
from server.errors import APIError, error_response
from server.logs import log_request
from server.state import ServerState

PROBES = {"/health", "/ready", "/metrics"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_BODY_METHODS = ("POST", "PUT", "PATCH")


class WriteStalled(Exception):
    """The client stopped reading: one send of the response waited longer than --write-stall-timeout."""


class RequestMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.keys = APIKeyChecker(state.settings.all_api_keys())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        log: dict[str, Any] = {}
        scope.setdefault("state", {}).update(request_id=request_id, glm_log=log)
        path = scope["path"]
        probe = path in PROBES
        status = {"code": 500}
        stall = self.state.settings.write_stall_timeout
        stalled: list[bool] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            if not stall or message["type"] != "http.response.body":
                await send(message)
                return
            try:
                async with asyncio.timeout(stall):  # uvicorn's send waits while the socket buffer is full
                    await send(message)
            except TimeoutError:
                stalled.append(True)
                log["error"] = "write_stalled"
                raise WriteStalled() from None

        if not probe:
            self.state.num_http_in_flight += 1
        rejection: APIError | None = None
        try:
            rejection = self._reject_early(scope, path, headers)
            body_receive = receive
            if rejection is None and scope["method"] in _BODY_METHODS:
                body_receive, rejection = await self._buffer_body(receive, headers)
            if rejection is not None:
                log["error"] = rejection.code
                await _send_error(send_with_id, rejection, path)
            else:
                await self.app(scope, body_receive, send_with_id)
        except BaseException:
            # The app's task group may wrap it (an ExceptionGroup): returning leaves uvicorn to close the
            # connection of the unfinished response, and closing the stream aborts its engine work.
            if not stalled:
                raise
        finally:
            if not probe:
                self.state.num_http_in_flight -= 1
            elapsed = time.perf_counter() - started
            route_path = getattr(scope.get("route"), "path", None) or (
                _matching_route_path(scope) if rejection is not None else None) or (
                "static" if status["code"] < 400 else "unmatched")
            self.state.metrics.observe_http(scope["method"], route_path, status["code"], elapsed)
            log_request({"request_id": request_id, "method": scope["method"], "path": path,
                         "status": status["code"], "duration_ms": round(elapsed * 1000, 3), **log}, probe)

    def _reject_early(self, scope: Scope, path: str, headers: dict[str, str]) -> APIError | None:
        """What is decided from the request line and headers alone, before the body is read."""
        if self.state.draining and path.startswith("/v1"):
            return APIError(503, "the server is shutting down", code="server_shutting_down",
                            headers={"Retry-After": "5", "Connection": "close"})
        try:
            x_api_key = takes_x_api_key(path)
            key = (self.keys.check(scope["headers"], x_api_key) if self._needs_key(path)
                   else presented_key(scope["headers"], x_api_key))
        except APIError as e:
            return e
        scope["state"]["fairness_key"] = _fairness_key(key, scope)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.state.settings.max_request_bytes:
            return _too_large(self.state.settings.max_request_bytes)
        return None

    def _needs_key(self, path: str) -> bool:
        return path.startswith("/v1") or (path == "/metrics" and self.state.settings.metrics_auth)

    async def _buffer_body(self, receive: Receive, headers: dict[str, str]) -> tuple[Receive, APIError | None]:
        """Reads the whole body (FastAPI would anyway) so a chunked upload is held to the limit too,
        and a body trickled in (one byte a second) to the --body-timeout deadline; afterwards the app
        reads it back, then the real receive (for disconnect detection)."""
        limit = self.state.settings.max_request_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.state.settings.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        chunks = []
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        return receive, _too_large(limit)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return receive, _body_timeout(self.state.settings.body_timeout, size)
        body = b"".join(chunks)
        problem = json_body_problem(body) if body and _may_be_json(headers.get("content-type", "")) else None
        if problem is not None:
            return receive, APIError(400, problem[1], code=problem[0])
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay, None


def _may_be_json(content_type: str) -> bool:
    """FastAPI parses a body as JSON when its type is application/json or */*+json (or is missing)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def _fairness_key(key: str | None, scope: Scope) -> str:
    """Who the scheduler shares slots between: an API key (as a digest, never the key) or an address."""
    if key:
        return "key:" + hashlib.sha256(key.encode("latin-1", "replace")).hexdigest()[:16]
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:unknown"


def _body_timeout(seconds: float, received: int) -> APIError:
    # Connection: close, since the rest of the body would otherwise be read as the next request
    return APIError(408, f"the request body did not arrive within {seconds:g} seconds of its headers "
                    f"({received} bytes received)", code="body_timeout", headers={"Connection": "close"})


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def _route_paths(routes) -> set[str]:
    """Every concrete route path, through included routers."""
    out: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            out |= _route_paths(inner.routes)
        elif getattr(route, "path", "") and "{" not in route.path:
            out.add(route.path)
    return out


def _matching_route_path(scope: Scope) -> str | None:
    """The route a request refused before routing (401, 413, ...) was meant for, so it is counted there."""
    path = scope.get("path", "")
    router = getattr(scope.get("app"), "router", None)
    return path if router is not None and path in _route_paths(router.routes) else None


async def _send_error(send: Send, error: APIError, path: str = "") -> None:
    body = error_response(path, error).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

"""The outermost layer (pure ASGI, so streams pass through untouched): X-Request-ID, the request body
limit (413) and its JSON checks (400, server/body_checks.py), 503 for new work while draining,
in-flight counting for the drain, HTTP metrics and the one structured log line per request, written
when the last byte of the response has gone out."""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.body_checks import json_body_problem
from server.errors import APIError
from server.logs import log_request
from server.state import ServerState

PROBES = {"/health", "/ready", "/metrics"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if not probe:
            self.state.num_http_in_flight += 1
        try:
            rejection = self._reject_early(path, headers)
            body_receive = receive
            if rejection is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body_receive, rejection = await self._buffer_body(receive)
            if rejection is not None:
                log["error"] = rejection.code
                await _send_error(send_with_id, rejection)
            else:
                await self.app(scope, body_receive, send_with_id)
        finally:
            if not probe:
                self.state.num_http_in_flight -= 1
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or ("static" if status["code"] < 400 else "unmatched")
            self.state.metrics.observe_http(scope["method"], route_path, status["code"], elapsed)
            log_request({"request_id": request_id, "method": scope["method"], "path": path,
                         "status": status["code"], "duration_ms": round(elapsed * 1000, 3), **log}, probe)

    def _reject_early(self, path: str, headers: dict[str, str]) -> APIError | None:
        if self.state.draining and path.startswith("/v1"):
            return APIError(503, "the server is shutting down", code="server_shutting_down",
                            headers={"Retry-After": "5", "Connection": "close"})
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.state.settings.max_request_bytes:
            return _too_large(self.state.settings.max_request_bytes)
        return None

    async def _buffer_body(self, receive: Receive) -> tuple[Receive, APIError | None]:
        """Reads the whole body (FastAPI would anyway) so a chunked upload is held to the limit too;
        afterwards the app reads it back, then the real receive (for disconnect detection)."""
        limit = self.state.settings.max_request_bytes
        chunks: list[bytes] = []
        size = 0
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
        body = b"".join(chunks)
        problem = json_body_problem(body)
        if problem is not None:
            return receive, APIError(400, problem[1], code=problem[0])
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay, None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

"""OpenAI-format errors: `{"error": {"message", "type", "param", "code"}}` with the matching status.

Serving code raises `APIError`; the handlers installed by `install_error_handlers` turn it, request
validation failures and anything unexpected into that body. Streams that already started send the
same JSON as their last SSE event (server/sse.py).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("glmserve.server")

# status -> the OpenAI error type the SDKs map to their exception classes
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
}


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 err_type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = err_type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# path prefix -> body builder, for routes that speak another API's error shape (Anthropic's /v1/messages)
_ERROR_SHAPES: dict[str, Callable[[APIError], dict[str, Any]]] = {}


def register_error_shape(path_prefix: str, body: Callable[[APIError], dict[str, Any]]) -> None:
    _ERROR_SHAPES[path_prefix] = body


def error_response(path: str, error: APIError) -> JSONResponse:
    """The error in the shape of the API that `path` belongs to (OpenAI's unless registered otherwise)."""
    build = next((b for prefix, b in _ERROR_SHAPES.items() if path.startswith(prefix)), None)
    if build is None:
        return error.response()
    return JSONResponse(build(error), status_code=error.status, headers=error.headers)


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready (logged as status 499)."""


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# pydantic error types that mean the body as a whole is not a JSON object of the right shape
_BODY_SHAPE_ERRORS = {"json_invalid", "missing", "model_attributes_type", "model_type", "dict_type"}


def _is_body_shape_error(error: dict[str, Any]) -> bool:
    return error.get("type") == "json_invalid" or (tuple(error.get("loc", ())) == ("body",)
                                                    and error.get("type") in _BODY_SHAPE_ERRORS)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if _is_body_shape_error(first):
        return "the request body must be a JSON object: " + str(first.get("msg", "")), None
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    # a model-level check (e.g. "top_logprobs requires logprobs") arrives as "Value error, <our message>"
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.error_code = exc.code or exc.type
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        code = "invalid_json" if any(_is_body_shape_error(e) for e in exc.errors()) else "invalid_value"
        return await _api_error(request, APIError(400, message, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        detail = str(exc.detail)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's body parse failed otherwise than
            # with a JSONDecodeError, e.g. an integer of more than 4300 digits (Python's int limit)
            code, detail = "invalid_json", f"the request body could not be parsed: {exc.__cause__}"
        err = APIError(exc.status_code, detail, code=code, headers=dict(exc.headers or {}))
        return await _api_error(request, err)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> Response:
        getattr(request.state, "glm_log", {})["error"] = "client_disconnected"
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return await _api_error(request, APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))

"""What every HTTP client here shares: server URL and key defaults, auth headers, SSE parsing, errors.

Clients speak the published OpenAI protocol only, so they work against any compatible server.
No torch, no `model`, no `server` imports (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class APIError(RuntimeError):
    """An error the server reported, as `{"error": {"message", "type", ...}}` or a bare HTTP status."""

    def __init__(self, message: str, status: int | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_


def default_url() -> str:
    return os.environ.get("GLMSERVE_URL", DEFAULT_URL)


def default_api_key() -> str | None:
    return os.environ.get("GLMSERVE_API_KEY") or os.environ.get("OPENAI_API_KEY")


def api_base(url: str) -> str:
    """Accepts `http://host:port` or `http://host:port/v1` and returns the `/v1` base without a trailing slash."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def headers(api_key: str | None) -> dict[str, str]:
    out = {"Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def error_from_body(status: int, body: bytes) -> APIError:
    """Builds an APIError from an OpenAI-style error body, falling back to the raw text."""
    text = body.decode("utf-8", errors="replace")
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        return APIError(f"{status}: {err.get('message')}", status, err.get("type"))
    if isinstance(err, str):
        return APIError(f"{status}: {err}", status)
    return APIError(f"{status}: {text[:500] or 'no body'}", status)


def check(response: httpx.Response) -> None:
    """Raises APIError for a non-2xx streamed response (reads its body first)."""
    if response.status_code >= 400:
        raise error_from_body(response.status_code, response.read())


async def acheck(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_from_body(response.status_code, await response.aread())


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """One `data:` line → its JSON event; None for comments, blank lines and `[DONE]`.

    An `{"error": ...}` event (the server's way to fail a stream that already started) raises APIError.
    """
    if not line.startswith("data:"):
        return None  # blank separators, `: keep-alive` comments, `event:`/`id:` fields
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    event = json.loads(data)
    err = event.get("error") if isinstance(event, dict) else None
    if err:
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise APIError(f"stream failed: {message}", None, err.get("type") if isinstance(err, dict) else None)
    return event


def iter_sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Yields the JSON events of a streamed response; iter_lines decodes UTF-8 incrementally,
    so a Chinese character split across network chunks is never broken."""
    for line in response.iter_lines():
        event = parse_sse_line(line)
        if event is not None:
            yield event


async def aiter_sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        event = parse_sse_line(line)
        if event is not None:
            yield event


def first_model(client: httpx.Client, base: str, api_key: str | None) -> str:
    """The first model id of GET /v1/models: the one a single-model server serves."""
    response = client.get(f"{base}/models", headers=headers(api_key))
    if response.status_code >= 400:
        raise error_from_body(response.status_code, response.content)
    data = response.json().get("data") or []
    if not data:
        raise APIError("the server lists no models")
    return str(data[0]["id"])


def chat_delta_text(event: dict[str, Any]) -> str:
    """The text of a chat.completion.chunk (or a completions chunk); '' for role-only or usage-only chunks."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""

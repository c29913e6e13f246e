"""API keys: `Authorization: Bearer <key>` on every /v1 route (streams included); the Anthropic
Messages route (X_API_KEY_PATHS) also takes `x-api-key: <key>`, what the Anthropic SDK sends.

Keys come from repeatable --api-key flags and --api-key-file (one per line). The comparison is
constant-time against every key, so neither timing nor the position of a matching key leaks, and a
key is never logged. With no key configured the API is open.

The middleware (server/middleware.py) checks the key before it reads the body, so an unauthenticated
client costs no parsing; the FastAPI dependency checks it again per route. A request carrying two
`Authorization` (or two `x-api-key`) headers, or both headers with different keys, is a 400: proxies
disagree on which of two headers counts, and we must not accept a key a proxy in front did not see.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

from fastapi import Request

from server.errors import APIError

KEY_HEADERS = (b"authorization", b"x-api-key")
X_API_KEY_PATHS = ("/v1/messages",)  # the Anthropic API's routes


def takes_x_api_key(path: str) -> bool:
    return path.startswith(X_API_KEY_PATHS)


def presented_key(raw_headers: Iterable[tuple[bytes, bytes]], x_api_key: bool = False) -> str | None:
    """The key a request presents (None: none, or an Authorization header that is not a Bearer token);
    `x-api-key` counts only where `x_api_key`. Raises a 400 for duplicate or conflicting headers."""
    values: dict[bytes, list[bytes]] = {name: [] for name in KEY_HEADERS}
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered in values:
            values[lowered].append(value)
    for name, found in values.items():
        if len(found) > 1:
            raise APIError(400, f"the request has {len(found)} `{name.decode()}` headers; send exactly one",
                           code="duplicate_header", param=name.decode())
    bearer = _bearer_token(values[b"authorization"][0]) if values[b"authorization"] else None
    api_key = values[b"x-api-key"][0].decode("latin-1").strip() if values[b"x-api-key"] and x_api_key else None
    if bearer is not None and api_key and not hmac.compare_digest(bearer.encode("latin-1"),
                                                                  api_key.encode("latin-1")):
        raise APIError(400, "`Authorization` and `x-api-key` name different keys; send one of them",
                       code="duplicate_header", param="x-api-key")
    return bearer if bearer is not None else (api_key or None)


def _bearer_token(value: bytes) -> str | None:
    scheme, _, token = value.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _missing() -> APIError:
    return APIError(401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


class APIKeyChecker:
    def __init__(self, keys: list[str]) -> None:
        # Compare digests: equal length inputs, so compare_digest's time does not depend on key length.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def is_valid(self, presented: str | None) -> bool:
        if not self._digests:
            return True
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode("latin-1", "replace")).digest()
        ok = False
        for expected in self._digests:  # no early exit
            ok |= hmac.compare_digest(digest, expected)
        return ok

    def check(self, raw_headers: Iterable[tuple[bytes, bytes]], x_api_key: bool = False) -> str | None:
        """Raises the 400/401 APIError a request's key headers deserve; returns the accepted key (None
        when the API is open)."""
        key = presented_key(raw_headers, x_api_key)
        if not self._digests:
            return None
        if key is None:
            raise _missing()
        if not self.is_valid(key):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return key

    async def __call__(self, request: Request) -> None:
        """FastAPI dependency."""
        self.check(request.scope["headers"], takes_x_api_key(request.url.path))

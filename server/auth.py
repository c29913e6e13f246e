"""API keys: `Authorization: Bearer <key>` on every /v1 route (streams included).

Keys come from repeatable --api-key flags and --api-key-file (one per line). The comparison is
constant-time against every key, so neither timing nor the position of a matching key leaks, and a
key is never logged. With no key configured the API is open.
"""
from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from server.errors import APIError


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
        digest = hashlib.sha256(presented.encode()).digest()
        ok = False
        for expected in self._digests:  # no early exit
            ok |= hmac.compare_digest(digest, expected)
        return ok

    async def __call__(self, request: Request) -> None:
        """FastAPI dependency."""
        if not self._digests:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if not self.is_valid(token.strip()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

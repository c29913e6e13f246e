"""Reading a raw SSE response the way a proxy or a hand-written client sees it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RawStream:
    status: int
    headers: httpx.Headers
    data: list[str] = field(default_factory=list)  # every `data:` payload, [DONE] included
    comments: list[str] = field(default_factory=list)  # keep-alive pings

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]


def post_stream(base_url: str, path: str, body: dict[str, Any], key: str | None, **headers: str) -> RawStream:
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    hdrs.update(headers)
    with httpx.stream("POST", base_url + path, json={**body, "stream": True}, headers=hdrs, timeout=120) as r:
        out = RawStream(r.status_code, r.headers)
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.data.append(line[6:])
            elif line.startswith(":"):
                out.comments.append(line)
    return out

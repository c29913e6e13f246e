"""OpenAI's batch file format: what a line asks for, what a result line says, and which ids are done.

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}          (input)
    {"id": "batch_req_...", "custom_id": "r1", "response": {"status_code": 200, "request_id": "...",
     "body": {...}}, "error": null}                                                             (output)

A line that cannot be run (not JSON, no custom_id, a duplicate id, a method or url outside URLS) gets a
result line with `response: null` and `error: {code, message}`; an HTTP error of the route itself is a
response with its status code and error body, as OpenAI's batch output reports it.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
        "/v1/translate", "/v1/summarize")


@dataclass
class BatchLine:
    line_number: int  # 1-based, for error messages
    custom_id: str | None
    url: str = ""
    body: dict[str, Any] | None = None
    error: dict[str, str] | None = None  # set when the line cannot be run


def parse_line(raw: str, line_number: int) -> BatchLine:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as e:
        return BatchLine(line_number, None, error=_error("invalid_json", f"line {line_number} is not JSON: {e}"))
    if not isinstance(item, dict):
        return BatchLine(line_number, None, error=_error("invalid_line", f"line {line_number} is not an object"))
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return BatchLine(line_number, None, error=_error("missing_custom_id",
                                                         f"line {line_number} has no string custom_id"))
    method, url, body = item.get("method", "POST"), item.get("url"), item.get("body")
    if method != "POST" or url not in URLS:
        return BatchLine(line_number, custom_id, error=_error(
            "unsupported_url", f"only POST to {', '.join(URLS)} is supported, got {method} {url}"))
    if not isinstance(body, dict):
        return BatchLine(line_number, custom_id, error=_error("invalid_body", "body must be a JSON object"))
    return BatchLine(line_number, custom_id, url, {**body, "stream": False})  # a batch result is one body


def read_lines(path: str | Path, done: set[str]) -> Iterator[BatchLine]:
    """The input's lines still to run: ids in `done` are skipped, and a repeated id gets an error."""
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            line = parse_line(raw, number)
            if line.custom_id in done:
                continue
            if line.custom_id is not None and line.custom_id in seen:
                line.error = _error("duplicate_custom_id", f"custom_id {line.custom_id!r} appears more than once")
            if line.custom_id is not None:
                seen.add(line.custom_id)
            yield line


def done_ids(path: str | Path) -> set[str]:
    """custom_ids that already have a result line (a rerun skips them); a torn last line does not count."""
    ids: set[str] = set()
    if not Path(path).exists():
        return ids
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                custom_id = json.loads(raw).get("custom_id")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(custom_id, str):
                ids.add(custom_id)
    return ids


def result_line(line: BatchLine, status: int | None = None, body: Any = None, request_id: str | None = None) -> str:
    response = None if line.error else {"status_code": status, "request_id": request_id, "body": body}
    return json.dumps({"id": "batch_req_" + secrets.token_hex(12), "custom_id": line.custom_id,
                       "response": response, "error": line.error}, ensure_ascii=False)


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}

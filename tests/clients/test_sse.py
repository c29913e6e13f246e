"""clients.api SSE parsing: the OpenAI stream format, including a failure sent after the stream began."""
from __future__ import annotations

import pytest

from clients.api import APIError, api_base, chat_delta_text, parse_sse_line


def test_data_lines_parse_and_others_are_skipped() -> None:
    event = parse_sse_line('data: {"choices": [{"delta": {"content": "你好"}}]}')
    assert chat_delta_text(event) == "你好"
    for line in ("", ": ping", "event: message", "data: [DONE]"):
        assert parse_sse_line(line) is None


def test_error_event_raises() -> None:
    with pytest.raises(APIError, match="engine died"):
        parse_sse_line('data: {"error": {"message": "engine died", "type": "server_error"}}')


def test_api_base_accepts_root_or_v1() -> None:
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == "http://h:1/v1"


def test_completions_chunks_and_usage_only_chunks() -> None:
    assert chat_delta_text({"choices": [{"text": "abc"}]}) == "abc"
    assert chat_delta_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""

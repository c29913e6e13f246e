"""The default model (SmolLM2-135M) behind `python -m server --model default`: start-up self-test,
Chinese streamed without broken characters, streamed == non-streamed at temperature 0, log lines."""
from __future__ import annotations

import json
import time

import httpx
from openai import OpenAI

from tests.helpers.live_server import SubprocessServer

ZH = [{"role": "user", "content": "用中文回答：中国的首都是哪里？"}]
EN = [{"role": "user", "content": "What is the capital of France?"}]


def stream_text(client: OpenAI, messages: list[dict], max_tokens: int) -> tuple[list[str], str | None]:
    deltas, finish = [], None
    for chunk in client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True):
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return deltas, finish


def test_self_test_passes_in_english_and_chinese(default_server: SubprocessServer) -> None:
    deadline = time.monotonic() + 600
    while (ready := httpx.get(default_server.base_url + "/ready").json())["self_test"]["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    result = ready["self_test"]
    assert [c["lang"] for c in result["checks"]] == ["en", "zh"]
    assert result["status"] == "passed", result
    logged = [json.loads(line) for line in default_server.logs().splitlines() if '"self-test' in line]
    assert logged and logged[-1]["self_test"]["status"] == "passed"


def test_chinese_stream_has_no_broken_characters_and_equals_non_streamed(default_client: OpenAI) -> None:
    deltas, finish = stream_text(default_client, ZH, 24)
    assert not any("\ufffd" in d for d in deltas)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(deltas))  # it did answer in Chinese
    whole = default_client.chat.completions.create(model="default", messages=ZH, max_tokens=24, temperature=0)
    assert "".join(deltas) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason


def test_english_answer_stops_by_itself_and_streams_identically(default_client: OpenAI) -> None:
    whole = default_client.chat.completions.create(model="default", messages=EN, max_tokens=24, temperature=0)
    assert whole.choices[0].finish_reason == "stop" and "Paris" in whole.choices[0].message.content
    deltas, finish = stream_text(default_client, EN, 24)
    assert "".join(deltas) == whole.choices[0].message.content and finish == "stop"


def test_one_json_log_line_per_request_without_prompt_text(default_server: SubprocessServer) -> None:
    resp = httpx.post(default_server.base_url + "/v1/chat/completions", timeout=300,
                      json={"messages": [{"role": "user", "content": "Say OK. zebra-canary"}], "max_tokens": 2},
                      headers={"X-Request-ID": "log-check-1"})
    assert resp.status_code == 200
    time.sleep(0.2)
    lines = [json.loads(line) for line in default_server.logs().splitlines()
             if line.startswith("{") and "log-check-1" in line]
    assert len(lines) == 1
    line = lines[0]
    for key in ("request_id", "model", "status", "prompt_tokens", "output_tokens", "queue_ms", "ttft_ms",
                "duration_ms", "time", "level"):
        assert key in line, key
    assert line["status"] == 200 and line["model"] == "default" and line["output_tokens"] == 2
    assert "zebra-canary" not in default_server.logs()

"""A client that goes away aborts its request: the engine stops generating and every KV block is
free again within a step or two (streaming and non-streaming)."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.server.conftest import KEY, user

LONG = {"model": "tiny", "messages": user("Go on forever."), "max_tokens": 1000, "ignore_eos": True}


def wait_idle(engine, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_total_blocks:
            return s
        time.sleep(0.02)
    pytest.fail(f"engine not idle {timeout}s after the client left: {engine.stats()}")


def test_stream_disconnect_aborts_and_frees_blocks(tiny_server) -> None:
    engine = tiny_server.engine
    before = engine.stats().generation_tokens_total
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", tiny_server.base_url + "/v1/chat/completions", json={**LONG, "stream": True},
                      headers=headers, timeout=60) as resp:
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                assert engine.stats().num_running == 1 and engine.stats().kv_cache_usage > 0
                break
    stats = wait_idle(engine)
    assert stats.generation_tokens_total - before < 1000
    assert tiny_server.state.num_active == 0 and tiny_server.state.num_queued == 0


def test_non_streaming_disconnect_aborts_and_frees_blocks(tiny_server) -> None:
    engine = tiny_server.engine
    before = engine.stats().generation_tokens_total
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tiny_server.base_url + "/v1/chat/completions", json=LONG,
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(60, read=0.3))
    stats = wait_idle(engine)
    assert stats.generation_tokens_total - before < 1000
    assert tiny_server.state.num_active == 0

"""Overload: 300 concurrent streaming requests against --max-queue 64. No 5xx; the excess get 429
with Retry-After; every accepted stream completes with a finish_reason and [DONE]; the server's RSS
stays bounded and the engine ends idle.

    .venv/bin/python -m pytest tests/reliability/test_overload.py -q -s
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers.live_server import SubprocessServer
from tests.reliability.support import AUTH, SERVER_ENV, SHAPE_CACHES_CAPPED, openai_error, parse_sse, rss_bytes, \
    tiny_args, user, wait_engine_idle

NUM_CLIENTS = 300
MAX_QUEUE = 64
MAX_TOKENS = 16
RSS_HEADROOM = 256 * 1024 * 1024  # 300 connections and their buffers must fit well inside this


@dataclass
class Outcome:
    status: int
    retry_after: str | None = None
    done: bool = False
    finish_reasons: tuple[str, ...] = ()
    error: dict | None = None


class RSSSampler(threading.Thread):
    """Polls /proc/PID/status while the load runs; `peak` is the largest VmRSS seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


async def one_stream(client: httpx.AsyncClient, i: int) -> Outcome:
    body = {"model": "tiny", "messages": user(f"request {i}"), "max_tokens": MAX_TOKENS, "stream": True,
            "ignore_eos": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        text = (await resp.aread()).decode()
    if resp.status_code != 200:
        return Outcome(resp.status_code, resp.headers.get("retry-after"), error=openai_error(resp.json()))
    stream = parse_sse(200, text)
    error = openai_error(stream.errors[-1]) if stream.errors else None
    return Outcome(200, done=stream.done, finish_reasons=tuple(stream.finish_reasons), error=error)


async def burst(base_url: str) -> list[Outcome]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS, max_keepalive_connections=NUM_CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, limits=limits, timeout=300) as client:
        return await asyncio.gather(*(one_stream(client, i) for i in range(NUM_CLIENTS)))


@pytest.fixture(scope="module")
def queue_server(tiny_llama_dir: str) -> SubprocessServer:
    args = tiny_args(tiny_llama_dir, "--max-queue", str(MAX_QUEUE), "--max-model-len", "128")
    with SubprocessServer(args, env={**SERVER_ENV, **SHAPE_CACHES_CAPPED}) as srv:  # RSS shows leaks, not caches
        yield srv


def test_300_concurrent_streams_against_max_queue_64(queue_server: SubprocessServer) -> None:
    base = queue_server.base_url
    asyncio.run(burst_warmup(base))
    wait_engine_idle(base)
    baseline = rss_bytes(queue_server.proc.pid)
    sampler = RSSSampler(queue_server.proc.pid)
    sampler.start()
    started = time.monotonic()
    outcomes = asyncio.run(burst(base))
    elapsed = time.monotonic() - started
    peak = sampler.stop()
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    print(f"{len(accepted)} accepted, {len(refused)} got 429 in {elapsed:.1f}s; RSS {baseline / 2**20:.0f} MiB "
          f"-> peak {peak / 2**20:.0f} MiB")
    assert len(accepted) + len(refused) == NUM_CLIENTS, sorted({o.status for o in outcomes})
    assert len(accepted) >= MAX_QUEUE and refused, (len(accepted), len(refused))
    for o in refused:
        assert o.error["type"] == "rate_limit_error" and o.error["code"] == "server_overloaded"
        assert o.retry_after is not None and int(o.retry_after) >= 1
    for o in accepted:  # every accepted request completes: no error event, a finish_reason, [DONE]
        assert o.error is None and o.done and o.finish_reasons == ("length",), o
    assert peak - baseline < RSS_HEADROOM
    idle = wait_engine_idle(base)
    assert idle["status"] == "ready"


async def burst_warmup(base_url: str) -> None:
    """A few requests first, so the baseline RSS includes what the first requests allocate once."""
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120) as client:
        await asyncio.gather(*(one_stream(client, i) for i in range(8)))


@pytest.mark.slow
def test_repeated_overload_waves_leave_no_memory_behind(queue_server: SubprocessServer) -> None:
    """Ten bursts in a row: each ends idle, and RSS after the last is within 5% of after the first."""
    base = queue_server.base_url
    after: list[int] = []
    for _ in range(10):
        outcomes = asyncio.run(burst(base))
        assert all(o.status in (200, 429) for o in outcomes)
        assert all(o.done and o.error is None for o in outcomes if o.status == 200)
        wait_engine_idle(base)
        after.append(rss_bytes(queue_server.proc.pid))
    print("RSS after each wave (MiB):", [round(b / 2**20) for b in after])
    assert (after[-1] - after[0]) / after[0] < 0.05

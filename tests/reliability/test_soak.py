"""Soak: mixed load (chat and completions, summarize and translate when the server has them, streaming
and not, clients that leave mid-stream) from a few concurrent workers for a fixed time. After the
warm-up: RSS grows by less than 5%, p99 latency of the last quarter stays within 2x (+0.25 s) of the
first quarter's, every request succeeds, and at the end no sequence, KV block or admission slot leaks.

    .venv/bin/python -m pytest tests/reliability/test_soak.py -q -s                     # ~75 s (CI)
    .venv/bin/python -m pytest tests/reliability/test_soak.py -q -s -m slow             # 10 minutes
    GLMSERVE_SOAK_SECONDS=1800 .venv/bin/python -m pytest tests/reliability/test_soak.py -q -s -m slow
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.reliability.support import AUTH, parse_sse, rss_bytes, user, wait_engine_idle

WORKERS = 6
WARMUP_FRACTION = 0.2
TEXT = "The river rose after three days of rain, and the town moved its market to the hill. " * 3
# kind -> (path, body, stream); "drop" streams leave after two events
KINDS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "chat": ("/v1/chat/completions", {"messages": user("Tell me a story."), "max_tokens": 24}, False),
    "chat_stream": ("/v1/chat/completions", {"messages": user("Stream a story."), "max_tokens": 24}, True),
    "completion": ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 24}, False),
    "completion_stream": ("/v1/completions", {"prompt": "In a far land", "max_tokens": 24}, True),
    "drop": ("/v1/chat/completions", {"messages": user("Never mind."), "max_tokens": 80, "ignore_eos": True}, True),
    "summarize": ("/v1/summarize", {"text": TEXT, "max_length": 20}, False),
    "summarize_stream": ("/v1/summarize", {"text": TEXT, "max_length": 20}, True),
    "translate": ("/v1/translate", {"text": "The market moved to the hill.", "target_lang": "fr"}, False),
    "translate_stream": ("/v1/translate", {"text": "The river rose.", "target_lang": "de"}, True),
}


@dataclass
class Record:
    kind: str
    started: float
    latency: float
    status: int
    problem: str | None = None


@dataclass
class SoakResult:
    records: list[Record] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)


async def one_request(client: httpx.AsyncClient, kind: str, t0: float) -> Record:
    path, body, stream = KINDS[kind]
    started = time.monotonic()
    problem = None
    if stream:
        async with client.stream("POST", path, json={"model": "tiny", **body, "stream": True}) as resp:
            if kind == "drop":
                seen = 0
                async for line in resp.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 2:
                        break  # closing unread = a disconnect
            else:
                events = parse_sse(resp.status_code, (await resp.aread()).decode())
                if resp.status_code == 200 and (not events.done or events.errors):
                    problem = f"stream ended badly: {events.data[-2:]}"
    else:
        resp = await client.post(path, json={"model": "tiny", **body})
    if resp.status_code != 200 and problem is None:
        problem = (await resp.aread()).decode()[:300]
    return Record(kind, started - t0, time.monotonic() - started, resp.status_code, problem)


async def run_soak(base_url: str, pid: int, seconds: float, kinds: list[str]) -> SoakResult:
    result = SoakResult()
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def worker(w: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120) as client:
            i = w
            while time.monotonic() < deadline:
                result.records.append(await one_request(client, kinds[i % len(kinds)], t0))
                i += 1

    async def sample_rss() -> None:
        while time.monotonic() < deadline:
            result.rss.append((time.monotonic() - t0, rss_bytes(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample_rss(), *(worker(w) for w in range(WORKERS)))
    return result


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def soak(srv: Any, seconds: float) -> None:
    base = srv.base_url
    paths = httpx.get(base + "/openapi.json").json()["paths"]
    kinds = [k for k, (path, _, _) in KINDS.items() if path in paths]  # tasks only where the server has them
    wait_engine_idle(base)
    result = asyncio.run(run_soak(base, srv.proc.pid, seconds, kinds))
    idle = wait_engine_idle(base, timeout=30)  # nothing leaked: sequences, blocks, admission slots

    warm = seconds * WARMUP_FRACTION
    quarter = (seconds - warm) / 4
    timed = [r for r in result.records if r.kind != "drop"]
    first = [r.latency for r in timed if warm <= r.started < warm + quarter]
    last = [r.latency for r in timed if r.started >= seconds - quarter]
    rss_warm = next(b for t, b in result.rss if t >= warm)
    rss_end = result.rss[-1][1]
    growth = (rss_end - rss_warm) / rss_warm
    counts = {k: sum(r.kind == k for r in result.records) for k in kinds}
    print(f"soak {seconds:.0f}s: {len(result.records)} requests {counts}; p99 first quarter {p99(first):.3f}s, "
          f"last quarter {p99(last):.3f}s; RSS after warm-up {rss_warm / 2**20:.1f} MiB -> end "
          f"{rss_end / 2**20:.1f} MiB ({growth:+.2%}); engine {idle['engine']}")

    failed = [r for r in result.records if r.problem is not None or r.status != 200]
    assert not failed, failed[:5]
    assert len(first) >= 20 and len(last) >= 20, (len(first), len(last))
    assert growth < 0.05
    assert p99(last) <= 2.0 * p99(first) + 0.25
    assert "Traceback" not in srv.logs()


def test_soak_short(rel_server) -> None:
    soak(rel_server, float(os.environ.get("GLMSERVE_SOAK_CI_SECONDS", "75")))


@pytest.mark.slow
def test_soak_ten_minutes(rel_server) -> None:
    soak(rel_server, float(os.environ.get("GLMSERVE_SOAK_SECONDS", "600")))

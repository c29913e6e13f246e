"""ServerState: what the whole app shares at run time (engine, settings, metrics, admission, drain).

Admission counts requests the server accepted that have not produced their first output yet: that is
the queue a new request would wait in, and what --max-queue bounds.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from model import AsyncEngine
from server.errors import APIError
from server.metrics import ServerMetrics
from server.settings import Settings

VERSION = "0.1.0"


@dataclass
class SelfTestResult:
    status: str = "pending"  # pending | passed | failed | skipped
    detail: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 3), "checks": self.detail}


class Ticket:
    """One admitted request's place in the queue; `started()` frees it, `close()` ends the request."""

    def __init__(self, state: "ServerState") -> None:
        self._state = state
        self._queued = True
        self._closed = False
        self.fairness_key: str | None = None  # whose request (the middleware's API-key digest or address)

    def started(self) -> None:
        if self._queued:
            self._queued = False
            self._state.num_queued -= 1

    def close(self) -> None:
        self.started()
        if not self._closed:
            self._closed = True
            self._state.num_active -= 1


class ServerState:
    def __init__(self, settings: Settings, engine: AsyncEngine, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.model_name = settings.model_name
        self.started_at = time.time()
        self.draining = False
        self.num_queued = 0  # admitted, no output yet
        self.num_active = 0  # admitted, not finished
        self.num_http_in_flight = 0  # every non-probe HTTP request still being answered (drain waits on it)
        # per engine request, the queue its outputs arrive in; the drain ends overdue requests through it
        self.engine_queues: dict[str, asyncio.Queue] = {}
        self.mean_output_tokens = 128.0  # running mean over finished requests, for Retry-After
        self.self_test = SelfTestResult(status="skipped" if settings.self_test == "off" else "pending")
        stats = engine.stats()
        self.max_model_len = engine.max_model_len
        # the longest sequence the KV cache can hold at all; the engine refuses anything longer
        self.kv_capacity_tokens = stats.num_total_blocks * stats.block_size
        self.system_fingerprint = "fp_" + hashlib.sha256(
            f"{VERSION}|{engine.model_path}|{settings.dtype}".encode()).hexdigest()[:10]

    @property
    def context_limit(self) -> int:
        """prompt + max_tokens must stay within this many tokens."""
        return min(self.max_model_len, self.kv_capacity_tokens)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.engine.is_alive:
            return False, "engine_dead"
        if self.settings.self_test == "require" and self.self_test.status != "passed":
            return False, "self_test_running" if self.self_test.status == "pending" else "self_test_failed"
        return True, "ready"

    def admit(self) -> Ticket:
        """Admission control: 503 while draining or with a dead engine, 429 beyond --max-queue."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="server_shutting_down")
        if not self.engine.is_alive:
            raise APIError(503, "the engine is not running", code="engine_dead")
        if self.num_queued >= self.settings.max_queue:
            retry = self.retry_after_seconds()
            raise APIError(429, f"the server is overloaded: {self.num_queued} requests are waiting "
                           f"(--max-queue {self.settings.max_queue}); retry in about {retry} s",
                           code="server_overloaded", headers={"Retry-After": str(retry)})
        self.num_queued += 1
        self.num_active += 1
        return Ticket(self)

    def retry_after_seconds(self) -> int:
        """Time for the queue ahead to drain: queued requests x mean output length / tokens per second."""
        throughput = self.engine.stats().generation_throughput
        if throughput <= 0:
            return max(1, min(60, self.num_queued))
        seconds = self.num_queued * self.mean_output_tokens / throughput
        return int(max(1, min(300, math.ceil(seconds))))

    def record_finished(self, num_output_tokens: int) -> None:
        """Each finished choice moves the running mean output length (an exponential average, 0.1 weight)."""
        self.mean_output_tokens = 0.9 * self.mean_output_tokens + 0.1 * max(1, num_output_tokens)

    def cut_all(self, error: APIError) -> int:
        """Ends every request still in the engine with `error` (its stream's last event). Returns how many."""
        for queue in self.engine_queues.values():
            queue.put_nowait(error)
        return len(self.engine_queues)

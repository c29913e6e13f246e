"""What the reliability tests share: the OpenAI error-shape check, engine stats and RSS of a live
server, SSE reading, and the flags of the tiny servers they start.

    from tests.reliability.support import assert_openai_error, wait_engine_idle, rss_bytes
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

KEY = "sk-reliability-7f3c"
AUTH = {"Authorization": f"Bearer {KEY}"}
# One torch thread per server: on 2 cores shared with the load generator (and other jobs), two
# spinning OpenMP threads made a tiny-model decode step ~30x slower (110 ms vs 3 ms).
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
# oneDNN's primitive cache and ideep's LRU cache keep one entry per distinct input shape of the packed
# linears (model/engine/cpu_packing.py), up to 1024 each: under varied prompt lengths RSS climbs by
# hundreds of MiB before they fill (docs/RELIABILITY.md). Capped, RSS over time shows leaks only.
SHAPE_CACHES_CAPPED = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1", "LRU_CACHE_CAPACITY": "1"}


def tiny_args(model_dir: str, *flags: str) -> list[str]:
    """Flags of a tiny-model server: API key on, no start-up self-test (it would spend CPU)."""
    return ["--model", model_dir, "--served-model-name", "tiny", "--api-key", KEY, "--self-test", "off", *flags]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def openai_error(body: Any) -> dict[str, Any]:
    """The `error` object of an OpenAI error body; fails unless all four fields have the right types."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    return err


def assert_openai_error(resp: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx/5xx response with an OpenAI error body (and the given status, when given)."""
    if status is not None:
        assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.status_code >= 400, resp.text[:500]
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    return openai_error(resp.json())


def ready(base_url: str) -> httpx.Response:
    return httpx.get(base_url + "/ready", timeout=10)


def engine_stats(base_url: str) -> dict[str, Any]:
    """EngineStats as /ready reports them (num_running, num_waiting, num_free_blocks, ...)."""
    return ready(base_url).json()["engine"]


def wait_engine_idle(base_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Waits for no running or waiting sequence, every KV block free and no admitted request."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = ready(base_url).json()
        s = body["engine"]
        if (s["num_running"] == 0 and s["num_waiting"] == 0 and s["num_free_blocks"] == s["num_total_blocks"]
                and body["active"] == 0 and body["queued"] == 0):
            return body
        time.sleep(0.05)
    raise AssertionError(f"server not idle after {timeout}s: {body}")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS is in kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class SSEResult:
    status: int
    data: list[str] = field(default_factory=list)  # every `data:` payload, [DONE] included
    error_body: Any = None  # the JSON body when the answer was not a stream

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == "[DONE]"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "error" in e]

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for e in self.events for c in e.get("choices", []) if c.get("finish_reason")]


def parse_sse(status: int, text: str) -> SSEResult:
    out = SSEResult(status)
    for line in text.splitlines():
        if line.startswith("data: "):
            out.data.append(line[6:])
    return out

"""Graceful shutdown of the real process (`python -m server`): SIGTERM turns /ready and new requests
to 503, lets running streams finish within --drain-timeout, cuts the rest with an error event, and
the process exits 0. Also the per-request JSON log line."""
from __future__ import annotations

import json
import threading
import time

import httpx

from tests.helpers.live_server import SubprocessServer
from tests.server.sse_util import RawStream, post_stream

LONG = {"model": "tiny", "messages": [{"role": "user", "content": "secret prompt text"}], "max_tokens": 900,
        "ignore_eos": True}


def tiny_process(model_dir: str, *flags: str) -> SubprocessServer:
    return SubprocessServer(["--model", model_dir, "--served-model-name", "tiny", "--self-test", "off", *flags])


def tokens_for(srv: SubprocessServer, seconds: float) -> int:
    """How many tokens take about `seconds` right now (the machine may be shared and slow)."""
    probe = httpx.post(srv.base_url + "/v1/chat/completions", json={**LONG, "max_tokens": 32}, timeout=120).json()
    per_token_s = max(probe["timings"]["decode_ms"] / 31 / 1000, 1e-4)
    return int(min(900, max(32, seconds / per_token_s)))


def start_stream(srv: SubprocessServer, max_tokens: int = 900) -> tuple[threading.Thread, dict]:
    """A long stream in the background; returns once it is producing tokens."""
    result: dict[str, RawStream] = {}
    body = {**LONG, "max_tokens": max_tokens}
    thread = threading.Thread(target=lambda: result.update(raw=post_stream(srv.base_url, "/v1/chat/completions",
                                                                            body, None, **{"X-Request-ID": "s1"})))
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        ready = httpx.get(srv.base_url + "/ready").json()
        if ready["active"] == 1 and ready["queued"] == 0:
            return thread, result
        assert time.monotonic() < deadline, ready
        time.sleep(0.01)


def log_lines(srv: SubprocessServer) -> list[dict]:
    return [json.loads(line) for line in srv.logs().splitlines() if line.startswith("{")]


def test_sigterm_drains_running_stream_then_exits_zero(tiny_llama_dir: str) -> None:
    with tiny_process(tiny_llama_dir, "--drain-timeout", "300", "--log-prompts") as srv:
        max_tokens = tokens_for(srv, 3.0)
        thread, result = start_stream(srv, max_tokens)
        srv.terminate()
        deadline = time.monotonic() + 5
        while (ready := httpx.get(srv.base_url + "/ready")).status_code == 200:
            assert time.monotonic() < deadline
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = httpx.post(srv.base_url + "/v1/chat/completions", json={**LONG, "max_tokens": 1})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        assert srv.proc.poll() is None  # still serving the stream
        thread.join(300)
        raw = result["raw"]
        assert raw.data[-1] == "[DONE]" and raw.events[-1]["choices"][0]["finish_reason"] == "length"
        assert srv.wait(30) == 0
        [line] = [entry for entry in log_lines(srv) if entry.get("request_id") == "s1"]
        assert line["status"] == 200 and line["output_tokens"] == max_tokens and line["stream"] is True
        assert "secret prompt text" in json.dumps(line["prompt"])  # --log-prompts


def test_drain_timeout_ends_streams_with_an_error_event(tiny_llama_dir: str) -> None:
    with tiny_process(tiny_llama_dir, "--drain-timeout", "0.2") as srv:
        thread, result = start_stream(srv)
        srv.terminate()
        thread.join(30)
        raw = result["raw"]
        assert raw.data[-1] == "[DONE]"
        assert raw.events[-1]["error"]["code"] == "server_shutting_down"
        assert srv.wait(30) == 0
        [line] = [entry for entry in log_lines(srv) if entry.get("request_id") == "s1"]
        assert line["error"] == "server_shutting_down" and "prompt" not in line
        assert "secret prompt text" not in srv.logs()

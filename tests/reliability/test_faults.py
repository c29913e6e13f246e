"""Faults. An exception while one request is processed (injected in Postprocessor.accept_token by tests/helpers/faults.py) fails that request only:
a 500 in the OpenAI format, or a final SSE error event for a stream, while a concurrent request
finishes normally and every KV block comes back. A dead engine loop fails every in-flight request,
turns /ready and /health to 503, refuses new work, and the real process exits with code 3 so the
orchestrator restarts it; no stream hangs.

    .venv/bin/python -m pytest tests/reliability/test_faults.py -q
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import httpx
import pytest

from server.lifecycle import ENGINE_DEAD_EXIT_CODE
from tests.helpers.faults import failing_requests
from tests.helpers.live_server import SubprocessServer, ThreadedServer
from tests.reliability.support import AUTH, KEY, SERVER_ENV, SSEResult, assert_openai_error, openai_error, \
    parse_sse, tiny_args, user, wait_engine_idle

# long enough to outlive the victim, which fails on its first token
LONG = {"model": "tiny", "messages": user("keep going"), "max_tokens": 32, "ignore_eos": True}
SHORT = {"model": "tiny", "messages": user("short"), "max_tokens": 8, "ignore_eos": True}


def tiny_threaded(model_dir: str) -> ThreadedServer:
    from server.settings import Settings

    return ThreadedServer(Settings(model=model_dir, served_model_name="tiny", api_key=[KEY], self_test="off",
                                   max_model_len=128, max_num_seqs=8, kv_cache_memory="16MiB"))


@pytest.fixture(scope="module")
def hooked(tiny_llama_dir: str) -> ThreadedServer:
    """In-process server: the test reaches the engine (tests/helpers/faults.py) and the server state."""
    with tiny_threaded(tiny_llama_dir) as srv:
        yield srv


def post_stream(base_url: str, body: dict[str, Any], timeout: float = 60) -> SSEResult:
    with httpx.stream("POST", base_url + "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=timeout) as resp:
        text = resp.read().decode()
    return parse_sse(resp.status_code, text) if resp.status_code == 200 else SSEResult(resp.status_code,
                                                                                       error_body=json.loads(text))


class Background(threading.Thread):
    """Runs fn() on a thread; .result holds what it returned (or .error what it raised)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-examined by the test
            self.error = e


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
    return value


def start_bystander(srv: ThreadedServer) -> tuple[Background, str]:
    """A long stream that must survive the fault; returns it and its engine request id once it runs."""
    bystander = Background(lambda: post_stream(srv.base_url, LONG))
    rid = wait_for(lambda: next(iter(srv.state.engine_queues), None))
    return bystander, rid


def fail_all_but(srv: ThreadedServer, spared: str):
    def hook(request_id: str) -> None:
        if request_id != spared:
            raise RuntimeError("injected fault")

    return failing_requests(srv.engine.engine, hook)


def test_fault_in_one_request_fails_it_with_a_500_and_spares_the_other(hooked: ThreadedServer) -> None:
    bystander, rid = start_bystander(hooked)
    with fail_all_but(hooked, rid):
        resp = httpx.post(hooked.base_url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=60)
    err = assert_openai_error(resp, 500)
    assert err["type"] == "server_error" and err["code"] == "generation_failed" and "injected fault" in err["message"]
    bystander.join(60)
    assert bystander.result.done and bystander.result.finish_reasons == ["length"] and not bystander.result.errors
    wait_engine_idle(hooked.base_url)


def test_fault_in_one_stream_ends_it_with_an_error_event(hooked: ThreadedServer) -> None:
    bystander, rid = start_bystander(hooked)
    with fail_all_but(hooked, rid):
        victim = post_stream(hooked.base_url, SHORT)
    assert victim.status == 200 and victim.done and victim.finish_reasons == []
    err = openai_error(victim.events[-1])  # the last event before [DONE]
    assert err["type"] == "server_error" and err["code"] == "generation_failed"
    bystander.join(60)
    assert bystander.result.done and bystander.result.finish_reasons == ["length"] and not bystander.result.errors
    wait_engine_idle(hooked.base_url)


def test_server_answers_normally_once_the_fault_is_gone(hooked: ThreadedServer) -> None:
    resp = httpx.post(hooked.base_url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=60)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 8


def kill_engine_loop(srv: ThreadedServer) -> None:
    def failing_step() -> list:
        raise RuntimeError("engine loop killed by the test")

    srv.engine.engine.step = failing_step  # the loop thread dies on its next step


def test_dead_engine_loop_fails_streams_and_turns_ready_503(tiny_llama_dir: str) -> None:
    with tiny_threaded(tiny_llama_dir) as srv:
        streams = [Background(lambda: post_stream(srv.base_url, LONG)) for _ in range(3)]
        wait_for(lambda: len(srv.state.engine_queues) == 3)
        kill_engine_loop(srv)
        for s in streams:
            s.join(15)
            assert not s.is_alive(), "a stream hangs after the engine died"
            assert s.result.done and openai_error(s.result.errors[-1])["code"] == "engine_dead"
        ready = httpx.get(srv.base_url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "engine_dead"
        assert httpx.get(srv.base_url + "/health").status_code == 503
        refused = httpx.post(srv.base_url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=30)
        assert assert_openai_error(refused, 503)["code"] == "engine_dead"


def test_dead_engine_loop_ends_the_process_with_exit_code_3(tiny_llama_dir: str) -> None:
    """The real command line, with the test-only fault route switched on (GLMSERVE_TEST_FAULTS=1)."""
    env = {**SERVER_ENV, "GLMSERVE_TEST_FAULTS": "1"}
    with SubprocessServer(tiny_args(tiny_llama_dir, "--max-model-len", "128"), env=env) as srv:
        longer = {**LONG, "max_tokens": 90}  # the whole context: still running when the kill lands
        streams = [Background(lambda: post_stream(srv.base_url, longer)) for _ in range(3)]
        waiting = Background(lambda: httpx.post(srv.base_url + "/v1/chat/completions", json=longer, headers=AUTH,
                                                timeout=60))
        wait_for(lambda: httpx.get(srv.base_url + "/ready").json()["engine"]["num_running"] == 4)
        # a client behind a local proxy is not loopback (uvicorn trusts X-Forwarded-For from 127.0.0.1)
        remote = httpx.post(srv.base_url + "/_test/faults/kill-engine", headers={"X-Forwarded-For": "203.0.113.7"})
        assert assert_openai_error(remote, 403)["code"] == "forbidden"
        killed = httpx.post(srv.base_url + "/_test/faults/kill-engine")
        assert killed.status_code == 200, killed.text
        for s in streams:
            s.join(15)
            assert not s.is_alive(), "a stream hangs after the engine died"
            assert s.result.done and openai_error(s.result.errors[-1])["code"] == "engine_dead"
        waiting.join(15)
        assert assert_openai_error(waiting.result, 503)["code"] == "engine_dead"
        assert srv.wait(30) == ENGINE_DEAD_EXIT_CODE
        assert "engine loop died" in srv.logs()

"""Backpressure: beyond --max-queue waiting requests the server answers 429 with a Retry-After
estimated from queue depth and throughput. Also --metrics-auth. One engine slot, queue of one."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from openai import OpenAI, RateLimitError

from tests.helpers.live_server import ThreadedServer
from tests.server.conftest import user

KEY = "sk-bp"


@pytest.fixture(scope="module")
def busy_server(tiny_llama_dir: str):
    from server.settings import Settings

    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", api_key=[KEY], metrics_auth=True,
                        max_num_seqs=1, max_queue=1, self_test="off")
    with ThreadedServer(settings) as srv:
        yield srv


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_gets_429_with_retry_after(busy_server) -> None:
    client = OpenAI(base_url=busy_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    state = busy_server.state
    queued_result: dict = {}
    running = client.chat.completions.create(model="tiny", messages=user("long"), max_tokens=1000, stream=True,
                                             extra_body={"ignore_eos": True})
    next(iter(running))  # the role chunk
    wait_for(lambda: state.num_queued == 0 and state.num_active == 1)  # producing tokens: the one slot is busy

    def waiting_request() -> None:
        queued_result["resp"] = client.chat.completions.create(model="tiny", messages=user("queued"), max_tokens=2)

    waiter = threading.Thread(target=waiting_request)
    waiter.start()
    wait_for(lambda: state.num_queued == 1)
    with pytest.raises(RateLimitError) as err:
        client.chat.completions.create(model="tiny", messages=user("one too many"), max_tokens=2)
    assert err.value.status_code == 429
    assert err.value.body["code"] == "server_overloaded" and err.value.body["type"] == "rate_limit_error"
    assert int(err.value.response.headers["retry-after"]) >= 1
    running.close()  # frees the slot: the queued request runs
    waiter.join(30)
    assert queued_result["resp"].choices[0].finish_reason in ("stop", "length")
    wait_for(lambda: state.num_queued == 0 and state.num_active == 0)


def test_retry_after_grows_with_queue_depth(busy_server) -> None:
    state = busy_server.state
    one = state.retry_after_seconds()
    state.num_queued += 50  # as if 50 more requests waited
    try:
        assert state.retry_after_seconds() >= one
    finally:
        state.num_queued -= 50


def test_metrics_auth_protects_metrics(busy_server) -> None:
    assert httpx.get(busy_server.base_url + "/metrics").status_code == 401
    ok = httpx.get(busy_server.base_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and "glmserve:num_requests_running" in ok.text
    assert httpx.get(busy_server.base_url + "/health").status_code == 200


def test_retry_after_follows_the_measured_mean_output_length(busy_server) -> None:
    """Every finished choice feeds the running mean that Retry-After multiplies by the queue depth."""
    client = OpenAI(base_url=busy_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    state = busy_server.state
    before = state.mean_output_tokens
    for _ in range(3):
        reply = client.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=4,
                                               extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 4
    expected = before
    for _ in range(3):
        expected = 0.9 * expected + 0.1 * 4
    assert abs(state.mean_output_tokens - expected) < 1e-9
    # with the same queue and throughput, a longer mean output means a longer wait
    running = client.chat.completions.create(model="tiny", messages=user("long"), max_tokens=1000, stream=True,
                                             extra_body={"ignore_eos": True})
    next(iter(running))
    wait_for(lambda: state.engine.stats().generation_throughput > 0, timeout=60)
    state.num_queued += 20
    try:
        state.mean_output_tokens = 4.0
        short = state.retry_after_seconds()
        state.mean_output_tokens = 4000.0
        assert state.retry_after_seconds() > short
    finally:
        state.num_queued -= 20
        state.mean_output_tokens = expected
        running.close()
    wait_for(lambda: state.num_queued == 0 and state.num_active == 0, timeout=60)

"""SSE streaming: framing, headers, per-token deltas, usage chunk, pings, errors after the start, and
streamed == non-streamed at temperature 0 (sync, async and raw HTTP clients)."""
from __future__ import annotations

import asyncio

import pytest
from openai import APIError, AsyncOpenAI, OpenAI

from tests.server.conftest import KEY, PING_S, user
from tests.helpers.faults import failing_requests
from tests.server.sse_util import post_stream

MSG = user("Stream me a story.")


def test_stream_framing_headers_and_chunks(tiny_server) -> None:
    raw = post_stream(tiny_server.base_url, "/v1/chat/completions",
                      {"model": "tiny", "messages": MSG, "max_tokens": 6, "temperature": 0, "logprobs": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}}, KEY)
    assert raw.status == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["cache-control"] == "no-cache" and raw.headers["x-accel-buffering"] == "no"
    assert raw.data[-1] == "[DONE]"
    events = raw.events
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    first, *middle, finish, usage = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    # one chunk per token: with logprobs on, every token produces exactly one content chunk
    assert len(middle) == 6 and all(len(e["choices"][0]["logprobs"]["content"]) == 1 for e in middle)
    assert all(e["usage"] is None for e in events[:-1])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "length"
    assert set(finish["timings"]) == {"queue_ms", "prefill_ms", "decode_ms", "ttft_ms", "cached_tokens"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0


def test_usage_is_absent_unless_asked(tiny_server) -> None:
    raw = post_stream(tiny_server.base_url, "/v1/chat/completions",
                      {"model": "tiny", "messages": MSG, "max_tokens": 3}, KEY)
    assert all("usage" not in e for e in raw.events)
    assert raw.events[-1]["choices"][0]["finish_reason"] is not None


def test_keep_alive_pings_during_a_long_stream(tiny_server) -> None:
    raw = post_stream(tiny_server.base_url, "/v1/chat/completions",
                      {"model": "tiny", "messages": MSG, "max_tokens": 200, "ignore_eos": True}, KEY)
    assert raw.data[-1] == "[DONE]"
    assert any(c.startswith(": ping") for c in raw.comments), f"no ping in a stream longer than {PING_S}s"


def test_sdk_stream_equals_non_streamed_answer_at_temperature_zero(client: OpenAI) -> None:
    kwargs = dict(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    text, finish, usage = [], None, None
    for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(text) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


async def test_async_stream_with_n_choices(aclient: AsyncOpenAI) -> None:
    texts: dict[int, str] = {0: "", 1: ""}
    roles, finishes, usage = set(), {}, None
    stream = await aclient.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, n=2, seed=3,
                                                   stream=True, stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            if c.delta.role:
                roles.add(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert roles == {0, 1} and finishes == {0: "length", 1: "length"}
    assert usage.completion_tokens == 10


async def test_async_non_streamed_matches_sync(aclient: AsyncOpenAI, client: OpenAI) -> None:
    kwargs = dict(model="tiny", messages=MSG, max_tokens=6, temperature=0)
    a = await aclient.chat.completions.create(**kwargs)
    assert a.choices[0].message.content == client.chat.completions.create(**kwargs).choices[0].message.content


def test_completions_stream_equals_non_streamed(client: OpenAI) -> None:
    kwargs = dict(model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.fixture
def failing_third_token(tiny_server):
    """Each request fails at its third token (tests/helpers/faults.py)."""
    calls: dict[str, int] = {}

    def hook(request_id: str) -> None:
        calls[request_id] = calls.get(request_id, 0) + 1
        if calls[request_id] == 3:
            raise RuntimeError("injected fault")

    with failing_requests(tiny_server.engine.engine, hook):
        yield


def test_failure_after_stream_start_is_a_last_error_event_then_done(tiny_server, failing_third_token) -> None:
    raw = post_stream(tiny_server.base_url, "/v1/chat/completions",
                      {"model": "tiny", "messages": MSG, "max_tokens": 10, "ignore_eos": True}, KEY)
    assert raw.status == 200 and raw.data[-1] == "[DONE]"
    error = raw.events[-1]["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    assert "injected fault" in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_sdk_raises_on_the_error_event(client: OpenAI, failing_third_token) -> None:
    with pytest.raises(APIError, match="injected fault"):
        for _ in client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, stream=True,
                                                extra_body={"ignore_eos": True}):
            pass


def test_failure_without_stream_is_a_500(client: OpenAI, failing_third_token) -> None:
    with pytest.raises(APIError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, extra_body={"ignore_eos": True})
    assert err.value.code == "generation_failed" and "injected fault" in err.value.message


async def test_concurrent_streams_all_complete_and_leave_nothing_behind(aclient: AsyncOpenAI, tiny_server) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        text, finish = "", None
        stream = await aclient.chat.completions.create(model="tiny", messages=user(f"request {i}"), max_tokens=8,
                                                       temperature=0, stream=True)
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert all(finish in ("stop", "length") for _, finish in results)
    alone = await aclient.chat.completions.create(model="tiny", messages=user("request 3"), max_tokens=8,
                                                  temperature=0)
    assert results[3][0] == alone.choices[0].message.content  # batching does not change a greedy answer
    assert tiny_server.state.num_active == 0 and tiny_server.state.num_queued == 0

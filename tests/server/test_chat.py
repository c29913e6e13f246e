"""POST /v1/chat/completions through the openai SDK against the tiny live server: every field of
chat.completion, usage, and each sampling parameter reaching the engine."""
from __future__ import annotations

import time

import pytest
from openai import BadRequestError, OpenAI

from tests.server.conftest import user

MSG = user("Tell me something.")


def test_chat_completion_carries_every_openai_field(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MSG, max_tokens=5, temperature=0)
    body = raw.http_response.json()
    resp = raw.parse()
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert abs(resp.created - time.time()) < 120
    assert resp.model == "tiny" and resp.system_fingerprint.startswith("fp_")
    assert "service_tier" in body
    [choice] = resp.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert body["choices"][0]["message"]["refusal"] is None
    usage = resp.usage
    assert usage.prompt_tokens > 0 and 1 <= usage.completion_tokens <= 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0
    assert set(body["timings"]) == {"queue_ms", "prefill_ms", "decode_ms", "ttft_ms", "cached_tokens"}


def test_repeated_prompt_reports_cached_tokens(client: OpenAI) -> None:
    messages = user("A prompt long enough to fill several KV blocks of sixteen tokens each. " * 4)
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < second.usage.prompt_tokens
    assert second.model_extra["timings"]["cached_tokens"] == cached


def test_n_choices_are_numbered_and_counted(client: OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, n=3, seed=1,
                                          extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 12


def test_same_seed_gives_same_sample(client: OpenAI) -> None:
    kwargs = dict(model="tiny", messages=MSG, max_tokens=8, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_max_completion_tokens_limits_output(client: OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_completion_tokens=3,
                                          extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 3 and resp.choices[0].finish_reason == "length"


def test_min_tokens_is_honoured(client: OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0,
                                          extra_body={"min_tokens": 6})
    assert resp.usage.completion_tokens == 6


def _greedy_tokens(client: OpenAI, n: int = 8) -> tuple[str, list[str]]:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=n, temperature=0, logprobs=True,
                                          extra_body={"ignore_eos": True})
    return resp.choices[0].message.content, [t.token for t in resp.choices[0].logprobs.content]


def test_stop_string_cuts_the_answer_before_it(client: OpenAI) -> None:
    text, tokens = _greedy_tokens(client)
    stop = tokens[3]
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0, stop=[stop],
                                          extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    assert choice.message.content == text[: text.find(stop)]


def test_stop_token_ids_end_generation(client: OpenAI, tiny_server) -> None:
    _, tokens = _greedy_tokens(client)
    [stop_id] = tiny_server.engine.tokenizer.encode(tokens[2])
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop_id
    assert resp.usage.completion_tokens <= 3


def test_logprobs_and_top_logprobs(client: OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=3, extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 4
    for item in content:
        assert item.logprob <= 0 and item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 3
        assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs), reverse=True)
        assert item.top_logprobs[0].token == item.token  # greedy picks the most likely token
    assert "".join(t.token for t in content) == resp.choices[0].message.content


@pytest.mark.parametrize("extra", [{"top_k": 1}, {"min_p": 1.0}])
def test_truncating_sampling_to_one_token_equals_greedy(client: OpenAI, extra: dict) -> None:
    greedy, _ = _greedy_tokens(client)
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=1.0, seed=5,
                                          extra_body={"ignore_eos": True, **extra})
    assert resp.choices[0].message.content == greedy


def test_logit_bias_forces_a_token(client: OpenAI, tiny_server) -> None:
    [token_id] = tiny_server.engine.tokenizer.encode(" hello")
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, logit_bias={str(token_id): 100},
                                          extra_body={"ignore_eos": True}, user="user-42")
    assert resp.choices[0].message.content == " hello" * 3


@pytest.mark.parametrize("field,value", [("repetition_penalty", 0.0), ("top_k", -2), ("presence_penalty", 3.0),
                                         ("frequency_penalty", -3.0), ("top_p", 0.0), ("temperature", 2.5),
                                         ("n", 0), ("stop_token_ids", [10 ** 7]), ("logit_bias", {"x": 1})])
def test_invalid_sampling_value_is_a_400_naming_the_field(client: OpenAI, field: str, value: object) -> None:
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body={field: value})
    assert err.value.status_code == 400 and err.value.body["param"] == field
    assert err.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [("stop_token_ids", [10 ** 7]), ("logit_bias", {str(10 ** 7): 1})])
def test_token_ids_outside_the_vocabulary_are_a_400_before_a_stream_starts(client: OpenAI, field: str,
                                                                          value: object) -> None:
    with pytest.raises(BadRequestError) as err:  # checked before any event is sent
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, stream=True,
                                       extra_body={field: value})
    assert err.value.status_code == 400 and err.value.body["param"] == field


def test_penalties_are_accepted_within_range(client: OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, presence_penalty=1.5,
                                          frequency_penalty=1.0, extra_body={"repetition_penalty": 1.3,
                                                                             "ignore_eos": True})
    assert resp.usage.completion_tokens == 4


def test_developer_role_and_text_parts_are_accepted(client: OpenAI) -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert resp.choices[0].message.role == "assistant"


def test_image_content_is_refused(client: OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert err.value.body["param"] == "messages"

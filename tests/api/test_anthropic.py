"""POST /v1/messages and /v1/messages/count_tokens with the anthropic SDK on the default model: the same
greedy tokens as the equivalent chat completion, Anthropic's stream events, stop sequences, a tool round
trip (tool_use -> tool_result), x-api-key and Bearer auth, and errors in Anthropic's shape."""
from __future__ import annotations

import json

import anthropic
import pytest

from tests.api.conftest import GREEDY, KEY, WEATHER_PARAMS

TOOLS = [{"name": "get_weather", "description": "Current weather of a city", "input_schema": WEATHER_PARAMS}]
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                                 "parameters": WEATHER_PARAMS}}]
TURN = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def chat(oai):
    """The chat completion the Messages calls here must reproduce (one request for the module)."""
    return oai.chat.completions.create(model="default", max_tokens=12, **GREEDY,
                                       messages=[{"role": "system", "content": "Answer briefly."}, *TURN])


def test_create_equals_the_chat_completion(anth, chat) -> None:
    msg = anth.messages.create(model="default", max_tokens=12, system="Answer briefly.", messages=TURN,
                               extra_body=GREEDY)
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == chat.choices[0].message.content
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert msg.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[chat.choices[0].finish_reason]


def test_stream_sends_anthropic_events_and_the_same_text(anth, chat) -> None:
    kw = dict(model="default", max_tokens=12, system="Answer briefly.", messages=TURN, extra_body=GREEDY)
    with anth.messages.stream(**kw) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    assert final.content[0].text == chat.choices[0].message.content
    assert final.usage.output_tokens > 0


def test_stop_sequence_is_reported(anth) -> None:
    msg = anth.messages.create(model="default", max_tokens=40, stop_sequences=["three"], extra_body=GREEDY,
                               messages=[{"role": "user", "content": "Count in words: one, two, three, four."}])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "three"
    assert "three" not in msg.content[0].text


def test_tool_round_trip(anth, oai) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = anth.messages.create(model="default", max_tokens=40, tools=TOOLS, tool_choice={"type": "any"},
                               messages=ask, extra_body=GREEDY)
    use = msg.content[-1]
    assert msg.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather"
    chat = oai.chat.completions.create(model="default", max_tokens=40, tools=CHAT_TOOLS, tool_choice="required",
                                       messages=ask, **GREEDY)
    assert use.input == json.loads(chat.choices[0].message.tool_calls[0].function.arguments)
    follow = anth.messages.create(model="default", max_tokens=12, tools=TOOLS, extra_body=GREEDY, messages=[
        *ask, {"role": "assistant", "content": [use.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}])
    chat_follow = oai.chat.completions.create(model="default", max_tokens=12, tools=CHAT_TOOLS, **GREEDY, messages=[
        *ask, {"role": "assistant", "content": "", "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": use.name, "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21 C"}])
    assert follow.usage.input_tokens == chat_follow.usage.prompt_tokens
    text = "".join(b.text for b in follow.content if b.type == "text")
    assert text == (chat_follow.choices[0].message.content or "")


def test_streamed_tool_use_carries_its_input_as_json_deltas(anth) -> None:
    with anth.messages.stream(model="default", max_tokens=40, tools=TOOLS, extra_body=GREEDY,
                              tool_choice={"type": "tool", "name": "get_weather"},
                              messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        partial = "".join(e.delta.partial_json for e in stream
                          if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].input == json.loads(partial)


def test_count_tokens_equals_the_prompt_tokens_of_a_generation(anth) -> None:
    kw = dict(model="default", system="Answer briefly.", messages=TURN, tools=TOOLS)
    counted = anth.messages.count_tokens(**kw).input_tokens
    assert counted == anth.messages.create(max_tokens=1, **kw).usage.input_tokens > 0


def test_bearer_and_x_api_key_both_authenticate(api_server) -> None:
    by_bearer = anthropic.Anthropic(base_url=api_server.base_url, auth_token=KEY, max_retries=0)
    assert by_bearer.messages.count_tokens(model="default", messages=TURN).input_tokens > 0
    wrong = anthropic.Anthropic(base_url=api_server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="default", max_tokens=4, messages=TURN)
    assert info.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": "Incorrect API key provided."}}


@pytest.mark.parametrize("body, status, kind", [
    ({"model": "default", "messages": TURN}, 400, "invalid_request_error"),  # max_tokens is required
    ({"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     400, "invalid_request_error"),
    ({"model": "claude-nonexistent", "max_tokens": 4, "messages": TURN}, 404, "not_found_error"),
    ({"model": "default", "max_tokens": 10 ** 6, "messages": TURN}, 400, "invalid_request_error"),
])
def test_bad_requests_get_anthropic_errors(http, body, status, kind) -> None:
    resp = http.post("/v1/messages", json=body)
    assert resp.status_code == status
    data = resp.json()
    assert set(data) == {"type", "error"} and data["type"] == "error"
    assert data["error"]["type"] == kind and data["error"]["message"]

"""POST /v1/responses with the openai SDK (`responses.create`, `responses.stream`) on the default model:
the same greedy tokens as the equivalent chat completion, the published stream events, function tools
with a round trip, text.format json_schema, and 400s for what a stateless server cannot do."""
from __future__ import annotations

import json

import openai
import pytest

from tests.api.conftest import GREEDY, WEATHER_PARAMS

QUESTION = "Name three colours of the rainbow."
TOOL = {"type": "function", "name": "get_weather", "description": "Current weather of a city",
        "parameters": WEATHER_PARAMS}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}


@pytest.fixture(scope="module")
def chat(oai):
    """The chat completion every Responses call here must reproduce (one request for the module)."""
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    return oai.chat.completions.create(model="default", messages=messages, max_completion_tokens=12, **GREEDY)


def test_create_equals_the_chat_completion(oai, chat) -> None:
    resp = oai.responses.create(model="default", instructions="Answer briefly.", input=QUESTION,
                                max_output_tokens=12, **GREEDY)
    assert resp.output_text == chat.choices[0].message.content and resp.output_text
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.usage.output_tokens == chat.usage.completion_tokens
    assert resp.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"


def test_stream_sends_the_published_events_and_the_same_text(oai, chat) -> None:
    with oai.responses.stream(model="default", instructions="Answer briefly.", input=QUESTION,
                              max_output_tokens=12, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == chat.choices[0].message.content
    assert final.usage.output_tokens > 0


def test_forced_function_call_and_its_round_trip(oai) -> None:
    question = "What is the weather in Paris?"
    resp = oai.responses.create(model="default", input=question, tools=[TOOL], tool_choice="required",
                                max_output_tokens=40, **GREEDY)
    call = resp.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    chat = oai.chat.completions.create(model="default", messages=[{"role": "user", "content": question}],
                                       tools=[CHAT_TOOL], tool_choice="required", max_completion_tokens=40, **GREEDY)
    assert json.loads(call.arguments) == json.loads(chat.choices[0].message.tool_calls[0].function.arguments)
    follow = oai.responses.create(model="default", tools=[TOOL], max_output_tokens=12, **GREEDY, input=[
        {"role": "user", "content": question},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    chat_follow = oai.chat.completions.create(model="default", tools=[CHAT_TOOL], max_completion_tokens=12, **GREEDY,
                                              messages=[{"role": "user", "content": question},
                                                        {"role": "assistant", "content": "", "tool_calls": [
                                                            {"id": call.call_id, "type": "function", "function": {
                                                                "name": call.name, "arguments": call.arguments}}]},
                                                        {"role": "tool", "tool_call_id": call.call_id,
                                                         "content": "sunny, 21 C"}])
    assert follow.usage.input_tokens == chat_follow.usage.prompt_tokens
    assert follow.output_text == (chat_follow.choices[0].message.content or "")


def test_streamed_function_call_arguments_arrive_as_deltas(oai) -> None:
    with oai.responses.stream(model="default", input="Weather in Rome?", tools=[TOOL],
                              tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40,
                              **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == deltas == final.output[0].arguments
    assert isinstance(json.loads(deltas)["city"], str)


def test_text_format_json_schema_constrains_the_reply(oai) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "count": {"type": "integer"}}, "required": ["colour", "count"]}
    resp = oai.responses.create(model="default", input="Pick a colour and a count.", max_output_tokens=40, **GREEDY,
                                text={"format": {"type": "json_schema", "name": "pick", "schema": schema}})
    pick = json.loads(resp.output_text)
    assert pick["colour"] in ("red", "green", "blue") and isinstance(pick["count"], int)


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input.0.content.0"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
])
def test_what_cannot_be_served_is_a_400_naming_the_field(oai, extra, param) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(**{"model": "default", "input": "hi", **extra})
    assert info.value.body["param"] == param

"""Structured output and tool calling through the HTTP API with the official `openai` SDK, against the
default model (SmolLM2-135M-Instruct: ChatML, so tools use the Hermes format) on one server for the module."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.helpers.live_server import SubprocessServer
from tests.structured.cases import CASES
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL, assert_forced_call

TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def server():
    # One intra-op thread: on 2 cores shared with other test runs, OpenMP threads spin-waiting for each
    # other made a 32-token reply take ~25 CPU-seconds instead of ~1.
    args = ["--model", "default", "--max-num-seqs", "24", "--max-model-len", "2048", "--self-test", "off"]
    with SubprocessServer(args, env={"OMP_NUM_THREADS": "1"}, ready_timeout=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: SubprocessServer) -> OpenAI:
    return OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_json_schema_outputs_validate_for_twenty_prompts(server: SubprocessServer) -> None:
    async def one(aclient: AsyncOpenAI, prompt: str, schema: dict):
        return await aclient.chat.completions.create(
            model="default", messages=[{"role": "user", "content": prompt}], response_format=_schema_format(schema),
            max_tokens=64, temperature=0)

    async def run_all():
        async with AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300) as ac:
            return await asyncio.gather(*[one(ac, p, s) for p, s in CASES])

    replies = asyncio.run(run_all())
    for (prompt, schema), reply in zip(CASES, replies):
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", (prompt, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_output_parses(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": 'Return JSON with the keys "city" and "country" '
                                                               "for the capital of France."}],
        response_format={"type": "json_object"}, max_tokens=64, temperature=0)
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_sampled_choices_each_validate(client: OpenAI) -> None:
    prompt, schema = CASES[7]
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                           response_format=_schema_format(schema), n=3, temperature=1.0, seed=7,
                                           max_tokens=64)
    assert len(reply.choices) == 3
    for choice in reply.choices:
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_tool_round_trip(client: OpenAI) -> None:
    first = client.chat.completions.create(model="default", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                           max_tokens=64, temperature=0)
    choice = first.choices[0]
    call = assert_forced_call(choice, TOOLS)
    assert call.id.startswith("call_") and call.type == "function"
    history = ASK_WEATHER + [choice.message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "celsius": 21}'}]
    final = client.chat.completions.create(model="default", messages=history, tools=TOOLS, max_tokens=48,
                                           temperature=0)
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert answer.message.content
    # the tool call and its result are in the prompt of the second turn
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


def test_streamed_tool_round_trip(client: OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    stream = client.chat.completions.create(model="default", messages=ASK_WEATHER, tools=TOOLS, tool_choice=named,
                                            max_tokens=64, temperature=0, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        deltas += delta.tool_calls or []
        assert not delta.content
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert deltas[0].id and deltas[0].function.name == "get_time"
    assert len(deltas) > 2  # the arguments arrive as several deltas
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), TIME_TOOL["function"]["parameters"])
    call = {"id": deltas[0].id, "type": "function", "function": {"name": "get_time", "arguments": arguments}}
    history = ASK_WEATHER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": deltas[0].id, "content": '{"time": "14:05"}'}]
    stream = client.chat.completions.create(model="default", messages=history, tools=TOOLS, tool_choice="none",
                                            max_tokens=32, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_tools_on_auto_with_a_json_schema_give_a_valid_call_or_valid_json(client: OpenAI) -> None:
    prompt, schema = CASES[1]
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                           tools=TOOLS, response_format=_schema_format(schema), max_tokens=64,
                                           temperature=0)
    choice = reply.choices[0]
    if choice.message.tool_calls:  # the grammar allows either a call of a declared tool ...
        call = choice.message.tool_calls[0].function
        tool = {t["function"]["name"]: t["function"] for t in TOOLS}[call.name]
        jsonschema.validate(json.loads(call.arguments), tool["parameters"])
        assert choice.finish_reason == "tool_calls"
    else:  # ... or the JSON reply
        jsonschema.validate(json.loads(choice.message.content), schema)
        assert choice.finish_reason == "stop"


def test_call_cut_short_comes_back_as_text(client: OpenAI) -> None:
    for stream in (False, True):
        kwargs = dict(model="default", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_tokens=64,
                      temperature=0, stop=['"arguments"'])
        if not stream:
            choice = client.chat.completions.create(**kwargs).choices[0]
            content, calls, finish = choice.message.content, choice.message.tool_calls, choice.finish_reason
        else:
            chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
            finish = chunks[-1].choices[0].finish_reason
        assert finish == "stop" and not calls
        assert content.startswith("<tool_call>") and '"name"' in content


def test_constrained_and_free_requests_run_together(server: SubprocessServer, client: OpenAI) -> None:
    free = dict(model="default", messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=24,
                temperature=0)
    alone = client.chat.completions.create(**free).choices[0].message.content
    prompt, schema = CASES[0]

    async def both():
        async with AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300) as ac:
            return await asyncio.gather(
                ac.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                           response_format=_schema_format(schema), max_tokens=64, temperature=0),
                ac.chat.completions.create(**free))

    constrained, mixed = asyncio.run(both())
    jsonschema.validate(json.loads(constrained.choices[0].message.content), schema)
    assert mixed.choices[0].message.content == alone


@pytest.mark.parametrize("kwargs,param", [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}}),
     "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}}), "response_format"),
])
def test_inconsistent_structured_fields_are_400s(client: OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="default", messages=ASK_WEATHER, max_tokens=8, **kwargs)
    assert err.value.body["param"] == param

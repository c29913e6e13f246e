"""Forced tool calls on the GLM-4.5-Air replica (tests/helpers/glm_replicas.py: glm4_moe, GLM-4.5's tokenizer
tokens and published chat template) behind a live server: the XML grammar writes the call in GLM-4.5's own
layout after any (budgeted) reasoning, and streamed and collected replies of the same greedy request agree
field by field. Random weights write noise, so the tests rely on what the grammar and budget guarantee."""
from __future__ import annotations

import pytest
from openai import OpenAI

from model import ThinkingBudgetProcessor
from tests.helpers.live_server import ThreadedServer
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL, assert_forced_call

TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK = [{"role": "user", "content": "北京天气怎么样？"}]
BUDGET = 4


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    from server.settings import Settings
    from tests.helpers.glm_replicas import build_glm4_moe_replica

    path = build_glm4_moe_replica(tmp_path_factory.mktemp("zai-org") / "GLM-4.5-Air")
    settings = Settings(model=path, served_model_name="glm", max_num_seqs=4, kv_cache_memory="64MiB",
                        self_test="off")
    with ThreadedServer(settings) as srv:
        yield OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _ask(client: OpenAI, **extra):
    return client.chat.completions.create(**{"model": "glm", "messages": ASK, "tools": TOOLS, "temperature": 0,
                                             "max_tokens": 400, **extra})


def test_required_call_with_thinking_off(client: OpenAI) -> None:
    reply = _ask(client, tool_choice="required", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert_forced_call(reply.choices[0], TOOLS)
    assert reply.choices[0].message.model_extra["reasoning_content"] is None


def test_named_call_after_budgeted_reasoning_streams_as_it_collects(client: OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    extra = {"thinking_token_budget": BUDGET}
    reply = _ask(client, tool_choice=named, extra_body=extra)
    call = assert_forced_call(reply.choices[0], TOOLS)
    assert call.function.name == "get_weather"
    # the budget, up to MAX_GRACE_TOKENS finishing a character, and the two markers
    limit = BUDGET + ThinkingBudgetProcessor.MAX_GRACE_TOKENS + 2
    assert reply.usage.completion_tokens_details.reasoning_tokens <= limit

    chunks = list(_ask(client, tool_choice=named, extra_body=extra, stream=True))
    reasoning, name, arguments = "", "", ""
    for chunk in chunks:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        assert not delta.content
        for piece in delta.tool_calls or []:
            name += piece.function.name or ""
            arguments += piece.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert (reasoning or None, name, arguments) == (reply.choices[0].message.model_extra["reasoning_content"],
                                                    call.function.name, call.function.arguments)

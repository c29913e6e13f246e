"""The Responses and Messages requests as the chat requests they mean (no server: the conversions alone)."""
from __future__ import annotations

import pytest

from server.errors import APIError
from server.protocol.anthropic import MessagesRequest
from server.protocol.responses import ResponsesRequest
from server.serving.openai import anthropic_input, responses_input

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_anthropic_tool_turns_become_tool_calls_and_tool_messages() -> None:
    body = MessagesRequest(model="m", max_tokens=8, system=[{"type": "text", "text": "Be brief."}], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": ""},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "down",
                                      "is_error": True}, {"type": "text", "text": "And now?"}]}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        stop_sequences=["END"], tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    chat = anthropic_input.to_chat_request(body, max_tokens=body.max_tokens)
    roles = [m.role for m in chat.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assistant, tool = chat.messages[2], chat.messages[3]
    assert assistant.content == "Checking." and assistant.tool_calls == [CALL]
    assert getattr(assistant, "reasoning_content", "Use the tool.") == "Use the tool."
    assert tool.tool_call_id == "call_1" and tool.content == "Error: down"
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.parallel_tool_calls is False and chat.stop == ["END"] and chat.max_tokens == 8


@pytest.mark.parametrize("block", [{"type": "image", "source": {}}, {"type": "tool_result", "tool_use_id": 5}])
def test_anthropic_blocks_that_cannot_be_served_are_400s(block) -> None:
    body = MessagesRequest(model="m", max_tokens=8, messages=[{"role": "user", "content": [block]}])
    with pytest.raises(APIError) as info:
        anthropic_input.to_chat_request(body)
    assert info.value.status == 400 and info.value.param.startswith("messages.0.content.0")


def test_responses_items_become_chat_turns() -> None:
    body = ResponsesRequest(instructions="Be brief.", max_output_tokens=9, tool_choice={"type": "function",
                                                                                         "name": "get_weather"},
                            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
                            text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
                            input=[{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                                   {"type": "reasoning", "id": "rs_1", "summary": []},
                                   {"type": "message", "role": "assistant",
                                    "content": [{"type": "output_text", "text": "Checking."}]},
                                   {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                                    "arguments": '{"city": "Paris"}'},
                                   {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    chat = responses_input.to_chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool"]
    assert chat.messages[2].content == "Checking." and chat.messages[2].tool_calls == [CALL]
    assert chat.messages[3].content == "sunny" and chat.max_completion_tokens == 9
    assert chat.tools[0].function.name == "get_weather"
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.response_format.type == "json_schema" and chat.response_format.json_schema["name"] == "w"

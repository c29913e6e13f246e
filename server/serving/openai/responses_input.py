"""A Responses API request as the chat request it means (the one serving path runs it).

    chat_body = to_chat_request(body)     # instructions -> system, input items -> messages, tools, text.format

Input items: a string (one user turn); messages with string or input_text / output_text parts;
function_call items (an assistant turn's tool calls) and function_call_output items (tool results);
reasoning items are dropped (the template re-renders no earlier reasoning).
"""
from __future__ import annotations

import json
from typing import Any

from server.errors import APIError, bad_request
from server.protocol import ChatCompletionRequest, ChatMessage, ResponseFormat
from server.protocol.responses import ResponsesRequest

TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}
ROLES = {"user", "assistant", "system", "developer"}


def to_chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    _refuse_state(body)
    messages: list[ChatMessage] = []
    if body.instructions:
        messages.append(ChatMessage(role="system", content=body.instructions))
    if isinstance(body.input, str):
        messages.append(ChatMessage(role="user", content=body.input))
    else:
        for i, item in enumerate(body.input):
            _add_item(messages, item, f"input.{i}")
    if not messages:
        raise bad_request("input has no message", param="input")
    fields: dict[str, Any] = dict(
        model=body.model, messages=messages, max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature, top_p=body.top_p, tools=_tools(body.tools), tool_choice=_tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls, response_format=_response_format(body), stream=body.stream,
        user=body.user, seed=body.seed, top_k=body.top_k, stop=body.stop)
    try:
        return ChatCompletionRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as e:  # pydantic: a field the chat schema refuses
        raise bad_request(str(e).splitlines()[-1] if str(e) else "invalid request") from e


def _refuse_state(body: ResponsesRequest) -> None:
    if body.previous_response_id is not None:
        raise APIError(400, "previous_response_id is not supported: this server stores no responses; send the "
                       "whole conversation in `input`", param="previous_response_id", code="unsupported_parameter")
    if body.store:
        raise APIError(400, "store: true is not supported: this server stores no responses; omit `store` or "
                       "send false", param="store", code="unsupported_parameter")


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise bad_request(f"content part type {kind!r} is not supported by this text-only model "
                              f"(input_text and output_text are)", param=f"{param}.{j}")
        texts.append(part["text"])
    return "".join(texts)


def _add_item(messages: list[ChatMessage], item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise bad_request("each input item must be an object", param=param)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise bad_request(f"role must be one of {sorted(ROLES)}, got {role!r}", param=f"{param}.role")
        messages.append(ChatMessage(role=role, content=_text(item.get("content"), f"{param}.content")))
    elif kind == "function_call":
        name, arguments, call_id = item.get("name"), item.get("arguments", "{}"), item.get("call_id")
        if not isinstance(name, str) or not isinstance(arguments, str) or not isinstance(call_id, str):
            raise bad_request("a function_call item needs string call_id, name and arguments", param=param)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant":  # calls after (or beside) the turn's text
            last.tool_calls = [*(last.tool_calls or []), call]
        else:
            messages.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
    elif kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str):
            raise bad_request("a function_call_output item needs a string call_id", param=f"{param}.call_id")
        if not isinstance(output, str):
            output = _text(output, f"{param}.output") if isinstance(output, list) else json.dumps(output)
        messages.append(ChatMessage(role="tool", content=output, tool_call_id=call_id))
    elif kind == "reasoning":
        return
    else:
        raise bad_request(f"input item type {kind!r} is not supported (message, function_call, "
                          "function_call_output and reasoning are)", param=f"{param}.type")


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise bad_request("only function tools ({type: function, name, parameters}) are supported",
                              param=f"tools.{i}")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(body: ResponsesRequest) -> str | dict[str, Any] | None:
    choice = body.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise bad_request('tool_choice must be none, auto, required or {"type": "function", "name": ...}',
                              param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(body: ResponsesRequest) -> ResponseFormat | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.schema_ is None:
        raise bad_request("text.format json_schema needs a `schema`", param="text.format.schema")
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return ResponseFormat(type="json_schema", json_schema=spec)

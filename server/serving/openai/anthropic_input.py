"""An Anthropic Messages request as the chat request it means (the one serving path runs it).

    chat_body = to_chat_request(body)

system -> a system message; text blocks -> content; an assistant turn's tool_use blocks -> its tool_calls
(input dumped as JSON arguments); a user turn's tool_result blocks -> tool messages (ahead of the turn's
text, as the results answer the previous turn); an assistant turn's thinking blocks -> its
reasoning_content (templates that re-render earlier reasoning use it). tool_choice auto / any / tool /
none -> auto / required / the named function / none; `thinking` -> thinking_token_budget, or
enable_thinking false when disabled.
"""
from __future__ import annotations

import json
from typing import Any

from server.errors import bad_request
from server.protocol import ChatCompletionRequest, ChatMessage
from server.protocol.anthropic import AnthropicMessage, CountTokensRequest, MessagesRequest

DROPPED_BLOCKS = {"thinking", "redacted_thinking"}


def to_chat_request(body: CountTokensRequest, max_tokens: int | None = None) -> ChatCompletionRequest:
    messages: list[ChatMessage] = []
    system = _text(body.system, "system") if body.system is not None else None
    if system:
        messages.append(ChatMessage(role="system", content=system))
    for i, message in enumerate(body.messages):
        messages += _turn(message, f"messages.{i}")
    if not messages:
        raise bad_request("messages has no content", param="messages")
    fields: dict[str, Any] = dict(model=body.model, messages=messages, tools=_tools(body), max_tokens=max_tokens)
    choice = body.tool_choice
    if choice is not None:
        if choice.type == "tool" and not choice.name:
            raise bad_request('tool_choice {"type": "tool"} needs a `name`', param="tool_choice.name")
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
            choice.type, {"type": "function", "function": {"name": choice.name}})
        if choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    if isinstance(body, MessagesRequest):
        fields.update(stop=body.stop_sequences, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                      stream=body.stream, **_thinking(body.thinking))
    try:
        return ChatCompletionRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as e:  # pydantic: a value the chat schema refuses
        raise bad_request(str(e).splitlines()[-1] if str(e) else "invalid request") from e


def _thinking(thinking: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic's thinking switch as the chat path's reasoning fields (for reasoning checkpoints)."""
    if not thinking:
        return {}
    if thinking.get("type") == "disabled":
        return {"chat_template_kwargs": {"enable_thinking": False}}
    budget = thinking.get("budget_tokens")
    return {"thinking_token_budget": budget} if isinstance(budget, int) and budget >= 0 else {}


def _text(content: Any, param: str) -> str:
    """A string, or the text of a list of text blocks."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad_request("expected text blocks ({type: text, text})", param=f"{param}.{j}")
        texts.append(block["text"])
    return "".join(texts)


def _turn(message: AnthropicMessage, param: str) -> list[ChatMessage]:
    if isinstance(message.content, str):
        return [ChatMessage(role=message.role, content=message.content)]
    texts: list[str] = []
    thoughts: list[str] = []  # an assistant turn's thinking, for templates that re-render it
    calls: list[dict[str, Any]] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(message.content):
        where = f"{param}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and message.role == "assistant" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif kind in DROPPED_BLOCKS:
            continue
        elif kind == "tool_use" and message.role == "assistant":
            calls.append(_tool_use(block, where))
        elif kind == "tool_result" and message.role == "user":
            results.append(_tool_result(block, where))
        else:
            raise bad_request(f"content block {kind!r} is not supported in a {message.role} turn (text, "
                              "thinking, tool_use in assistant turns and tool_result in user turns are)", param=where)
    out = list(results)
    if message.role == "assistant":
        out.append(ChatMessage(role="assistant", content="".join(texts), tool_calls=calls or None,
                               reasoning_content="".join(thoughts) or None))
    elif texts or not results:
        out.append(ChatMessage(role="user", content="".join(texts)))
    return out


def _tool_use(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise bad_request("a tool_use block needs a string id and name and an object input", param=param)
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _tool_result(block: dict[str, Any], param: str) -> ChatMessage:
    call_id, content = block.get("tool_use_id"), block.get("content", "")
    if not isinstance(call_id, str):
        raise bad_request("a tool_result block needs a string tool_use_id", param=f"{param}.tool_use_id")
    if not isinstance(content, (str, list)):
        raise bad_request("tool_result content must be a string or text blocks", param=f"{param}.content")
    text = _text(content, f"{param}.content")
    if block.get("is_error"):
        text = f"Error: {text}"
    return ChatMessage(role="tool", content=text, tool_call_id=call_id)


def _tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    if not body.tools:
        return None
    out = []
    for i, tool in enumerate(body.tools):
        if tool.type not in (None, "custom"):
            raise bad_request(f"tool type {tool.type!r} is not supported (only client tools with an input_schema)",
                              param=f"tools.{i}.type")
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out

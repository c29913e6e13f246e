"""POST /v1/messages (Anthropic Messages API): a thin adapter over the chat-completions path.

The request becomes a chat request (anthropic_input.py), `start_chat` runs it exactly as
/v1/chat/completions would, and the result is converted: reasoning -> a `thinking` block, content -> a
`text` block, tool calls -> `tool_use` blocks (arguments parsed back into `input`). Streams use
Anthropic's events: message_start, content_block_start / content_block_delta (text_delta,
input_json_delta, thinking_delta) / content_block_stop, message_delta (stop_reason, usage), message_stop.
Errors on these routes have Anthropic's shape `{"type": "error", "error": {"type", "message"}}`
(registered with server/errors.py for the /v1/messages prefix, so the middleware's 413s use it too).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from server.errors import APIError, register_error_shape
from server.lora import response_model_name
from server.protocol import ChatCompletion
from server.protocol.anthropic import (AnthropicUsage, CountTokensRequest, CountTokensResponse, MessageObject,
                                       MessagesRequest)
from server.serving.engine_stream import until_disconnected
from server.serving.event_stream import Event, NamedEventStream
from server.serving.openai.anthropic_input import to_chat_request
from server.serving.openai.chat import ChatRun, start_chat
from server.serving.openai.tokenize import chat_prompt_ids
from server.serving.respond import finish_json
from server.state import ServerState

ROUTE_PREFIX = "/v1/messages"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_body(error: APIError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    message = f"{error.param}: {error.message}" if error.param and error.param not in error.message else error.message
    return {"type": "error", "error": {"type": kind, "message": message}}


register_error_shape(ROUTE_PREFIX, error_body)


def stop_reason(finish_reason: str | None, matched: str | int | None, has_tool_calls: bool) -> tuple[str, str | None]:
    """(Anthropic stop_reason, stop_sequence) of a chat finish_reason."""
    if has_tool_calls or finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(completion: ChatCompletion) -> list[dict[str, Any]]:
    message = completion.choices[0].message
    blocks: list[dict[str, Any]] = []
    reasoning = getattr(message, "reasoning_content", None)  # present once the chat path reports reasoning
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        fn = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"),
                       "input": tool_input(fn.get("arguments", ""))})
    return blocks


# ---- the endpoints -------------------------------------------------------------------------------------
async def create_message(state: ServerState, request: Request, body: MessagesRequest) -> Response:
    chat_body = to_chat_request(body, max_tokens=body.max_tokens)
    run = await start_chat(state, request, chat_body, id_prefix="msg")
    if body.stream:
        return NamedEventStream(MessageEvents(state, run).events(), error_event=lambda e: ("error", error_body(e)),
                                ping_interval=state.settings.sse_ping_interval, headers=run.headers,
                                on_close=run.ctx.close, on_error=run.ctx.fail)
    try:
        completion = await until_disconnected(request, run.collect(state))
    finally:
        run.ctx.close()
    choice = completion.choices[0]
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason, bool(choice.message.tool_calls))
    usage = completion.usage
    message = MessageObject(id=run.ctx.request_id, model=response_model_name(state), content=content_blocks(completion),
                            stop_reason=reason, stop_sequence=sequence,
                            usage=AnthropicUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                                 cache_read_input_tokens=usage.prompt_tokens_details.cached_tokens))
    return finish_json(state, message, run.headers)


async def count_tokens(state: ServerState, body: CountTokensRequest) -> CountTokensResponse:
    return CountTokensResponse(input_tokens=len(chat_prompt_ids(state, to_chat_request(body))))


class MessageEvents:
    """chat.completion.chunk deltas -> Anthropic stream events, one open content block at a time."""

    def __init__(self, state: ServerState, run: ChatRun) -> None:
        self.state, self.run = state, run
        self.index = -1  # of the open block
        self.open: str | None = None  # its type
        self.has_tool_calls = False

    async def events(self) -> AsyncIterator[Event]:
        message = MessageObject(id=self.run.ctx.request_id, model=response_model_name(self.state), content=[],
                                usage=AnthropicUsage(input_tokens=self.run.num_prompt_tokens, output_tokens=0))
        yield "message_start", {"type": "message_start", "message": message.model_dump()}
        finish_reason, matched = None, None
        async for chunk in self.run.chunks(self.state):
            for choice in chunk.get("choices") or []:
                for event in self.delta(choice.get("delta") or {}):
                    yield event
                if choice.get("finish_reason"):
                    finish_reason, matched = choice["finish_reason"], choice.get("stop_reason")
        for event in self.close_block():
            yield event
        reason, sequence = stop_reason(finish_reason, matched, self.has_tool_calls)
        usage = self.run.ctx.trace.usage()
        yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                                          "cache_read_input_tokens": usage.prompt_tokens_details.cached_tokens}}
        yield "message_stop", {"type": "message_stop"}

    def delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if delta.get("reasoning_content"):
            events += self.block_delta("thinking", {"type": "thinking_delta", "thinking": delta["reasoning_content"]})
        if delta.get("content"):
            events += self.block_delta("text", {"type": "text_delta", "text": delta["content"]})
        for call in delta.get("tool_calls") or []:
            fn = call.get("function") or {}
            if call.get("id"):  # a call's header opens a tool_use block
                self.has_tool_calls = True
                events += self.close_block()
                events += self.open_block("tool_use", {"type": "tool_use", "id": call["id"], "name": fn.get("name"),
                                                       "input": {}})
            if fn.get("arguments") and self.open == "tool_use":
                events.append(self.event("content_block_delta",
                                         delta={"type": "input_json_delta", "partial_json": fn["arguments"]}))
        return events

    def event(self, kind: str, **fields: Any) -> Event:
        return kind, {"type": kind, "index": self.index, **fields}

    def open_block(self, kind: str, block: dict[str, Any]) -> list[Event]:
        self.index += 1
        self.open = kind
        return [self.event("content_block_start", content_block=block)]

    def block_delta(self, kind: str, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if self.open != kind:
            events += self.close_block()
            empty = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                            "signature": ""}
            events += self.open_block(kind, empty)
        events.append(self.event("content_block_delta", delta=delta))
        return events

    def close_block(self) -> list[Event]:
        if self.open is None:
            return []
        events = []
        if self.open == "thinking":  # the SDK expects a signature before the block ends; none is made here
            events.append(self.event("content_block_delta", delta={"type": "signature_delta", "signature": ""}))
        self.open = None
        return [*events, self.event("content_block_stop")]

"""POST /v1/responses (OpenAI Responses API): a thin adapter over the chat-completions path.

The request becomes a chat request (responses_input.py), `start_chat` runs it exactly as
/v1/chat/completions would (same template, sampling, engine stream, tool parsing and forcing), and the
chat.completion (or its chunk stream) is converted: content -> a `message` item with `output_text`,
tool calls -> `function_call` items, reasoning_content (where the chat path reports it) -> a `reasoning`
item. Streams use the published event sequence: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta /
response.function_call_arguments.delta, ... .done, response.output_item.done, then response.completed
(status "incomplete" inside when max_output_tokens cut the answer).
"""
from __future__ import annotations

import secrets
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from server.errors import APIError
from server.lora import response_model_name
from server.protocol import ChatCompletion, Usage
from server.protocol.responses import ResponseObject, ResponsesRequest, ResponseUsage
from server.serving.engine_stream import until_disconnected
from server.serving.event_stream import Event, NamedEventStream
from server.serving.openai.chat import ChatRun, start_chat
from server.serving.openai.responses_input import to_chat_request
from server.serving.respond import finish_json
from server.state import ServerState


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                         total_tokens=usage.total_tokens,
                         input_tokens_details={"cached_tokens": usage.prompt_tokens_details.cached_tokens},
                         output_tokens_details={"reasoning_tokens":
                                                usage.completion_tokens_details.reasoning_tokens})


def skeleton(state: ServerState, body: ResponsesRequest, run: ChatRun) -> ResponseObject:
    """The response object before any output: echoes the request's settings."""
    return ResponseObject(
        id=run.ctx.request_id, created_at=run.ctx.created, model=response_model_name(state), status="in_progress",
        instructions=body.instructions, max_output_tokens=body.max_output_tokens, temperature=body.temperature,
        top_p=body.top_p, tool_choice=body.tool_choice or ("auto" if body.tools else "none"),
        tools=body.tools or [], parallel_tool_calls=body.parallel_tool_calls is not False,
        text=body.text.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else
        {"format": {"type": "text"}}, user=body.user, metadata=body.metadata or {})


def finish(resp: ResponseObject, finish_reason: str | None, usage: Usage) -> ResponseObject:
    incomplete = finish_reason == "length"
    resp.status = "incomplete" if incomplete else "completed"
    resp.incomplete_details = {"reason": "max_output_tokens"} if incomplete else None
    resp.usage = response_usage(usage)
    return resp


# ---- items ---------------------------------------------------------------------------------------------
def message_item(text: str, status: str = "completed", msg_id: str | None = None) -> dict[str, Any]:
    content = [output_text(text)] if status == "completed" else []
    return {"type": "message", "id": msg_id or item_id("msg"), "status": status, "role": "assistant",
            "content": content}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: dict[str, Any], arguments: str | None = None, status: str = "completed",
                       fc_id: str | None = None) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "function_call", "id": fc_id or item_id("fc"), "call_id": call.get("id") or item_id("call"),
            "name": fn.get("name", ""), "arguments": fn.get("arguments", "") if arguments is None else arguments,
            "status": status}


def reasoning_item(text: str, rs_id: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning", "id": rs_id or item_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def output_items(completion: ChatCompletion) -> list[dict[str, Any]]:
    message = completion.choices[0].message
    items = []
    reasoning = getattr(message, "reasoning_content", None)  # present once the chat path reports reasoning
    if reasoning:
        items.append(reasoning_item(reasoning))
    if message.content:
        items.append(message_item(message.content))
    items += [function_call_item(call) for call in message.tool_calls]
    return items


# ---- the endpoint ----------------------------------------------------------------------------------------
async def create_response(state: ServerState, request: Request, body: ResponsesRequest) -> Response:
    chat_body = to_chat_request(body)
    try:
        run = await start_chat(state, request, chat_body, id_prefix="resp")
    except APIError as e:  # the chat path names its own field; this API calls it max_output_tokens
        if e.param == "max_completion_tokens":
            e.param, e.message = "max_output_tokens", e.message.replace("max_completion_tokens", "max_output_tokens")
        raise
    if body.stream:
        events = ResponseEvents(state, body, run)
        return NamedEventStream(events.events(), error_event=events.error_event,
                                ping_interval=state.settings.sse_ping_interval, headers=run.headers,
                                on_close=run.ctx.close, on_error=run.ctx.fail)
    try:
        completion = await until_disconnected(request, run.collect(state))
    finally:
        run.ctx.close()
    resp = skeleton(state, body, run)
    resp.output = output_items(completion)
    finish(resp, completion.choices[0].finish_reason, completion.usage)
    return finish_json(state, resp, run.headers)


class ResponseEvents:
    """chat.completion.chunk deltas -> Responses stream events, one open output item at a time."""

    def __init__(self, state: ServerState, body: ResponsesRequest, run: ChatRun) -> None:
        self.state, self.run = state, run
        self.resp = skeleton(state, body, run)
        self.seq = 0
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text = ""  # its text or arguments so far

    def error_event(self, error: APIError) -> Event:
        """The published `error` event; its `error` object also makes the openai SDK raise APIError."""
        info = error.body()["error"]
        return self.event("error", code=info["code"], message=info["message"], param=info["param"], error=info)

    def event(self, kind: str, **fields: Any) -> Event:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return kind, payload

    async def events(self) -> AsyncIterator[Event]:
        yield self.event("response.created", response=self.resp.model_dump())
        yield self.event("response.in_progress", response=self.resp.model_dump())
        finish_reason = None
        async for chunk in self.run.chunks(self.state):
            for choice in chunk.get("choices") or []:
                for event in self.delta(choice.get("delta") or {}):
                    yield event
                finish_reason = choice.get("finish_reason") or finish_reason
        for event in self.close_item():
            yield event
        finish(self.resp, finish_reason, self.run.ctx.trace.usage())
        # response.completed also when max_output_tokens cut the answer (status "incomplete" inside): the
        # openai SDK's stream helpers only finish on that event, as vLLM's stream does
        yield self.event("response.completed", response=self.resp.model_dump())

    def delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if delta.get("reasoning_content"):
            events += self.text_delta("reasoning", delta["reasoning_content"])
        if delta.get("content"):
            events += self.text_delta("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            if call.get("id"):  # a call's header: a new function_call item
                events += self.close_item()
                item = function_call_item(call, arguments="", status="in_progress")
                events += self.open_item(item)
            arguments = (call.get("function") or {}).get("arguments")
            if arguments and self.open is not None and self.open["type"] == "function_call":
                self.text += arguments
                events.append(self.event("response.function_call_arguments.delta", item_id=self.open["id"],
                                         output_index=self.index, delta=arguments))
        return events

    @property
    def index(self) -> int:
        return len(self.resp.output)

    def open_item(self, item: dict[str, Any]) -> list[Event]:
        self.open, self.text = item, ""
        return [self.event("response.output_item.added", output_index=self.index, item=dict(item))]

    def text_delta(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self.open is None or self.open["type"] != kind:
            events += self.close_item()
            item = message_item("", "in_progress") if kind == "message" else {**reasoning_item(""),
                                                                              "status": "in_progress"}
            events += self.open_item(item)
            part = output_text("") if kind == "message" else {"type": "reasoning_text", "text": ""}
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=self.index,
                                     content_index=0, part=part))
        self.text += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self.event(name, item_id=self.open["id"], output_index=self.index, content_index=0,
                                 delta=text, **extra))
        return events

    def close_item(self) -> list[Event]:
        item, self.open = self.open, None
        if item is None:
            return []
        events: list[Event] = []
        common = {"item_id": item["id"], "output_index": self.index}
        if item["type"] == "function_call":
            item = {**item, "arguments": self.text, "status": "completed"}
            events.append(self.event("response.function_call_arguments.done", **common, name=item["name"],
                                     arguments=self.text))
        elif item["type"] == "message":
            part = output_text(self.text)
            item = {**item, "status": "completed", "content": [part]}
            events.append(self.event("response.output_text.done", **common, content_index=0, text=self.text,
                                     logprobs=[]))
            events.append(self.event("response.content_part.done", **common, content_index=0, part=part))
        else:
            part = {"type": "reasoning_text", "text": self.text}
            item = {k: v for k, v in item.items() if k != "status"} | {"content": [part]}
            events.append(self.event("response.reasoning_text.done", **common, content_index=0, text=self.text))
            events.append(self.event("response.content_part.done", **common, content_index=0, part=part))
        events.append(self.event("response.output_item.done", output_index=self.index, item=item))
        self.resp.output.append(item)
        return events

"""Llama 3.1+ JSON tool calls: the whole reply is one JSON object naming the tool.

    {"name": "get_weather", "parameters": {"city": "Paris"}}

(optionally after `<|python_tag|>`; `arguments` is accepted for `parameters`). A reply that is not
exactly such an object naming a declared tool is text.
"""
from __future__ import annotations

from model import ToolCallShape
from server.serving.openai.tool_parsers.base import ParsedToolCall, ParseResult, ToolParser, dump_arguments, json_object

PYTHON_TAG = "<|python_tag|>"


class Llama3Parser(ToolParser):
    def parse(self, text: str) -> ParseResult:
        body = text.strip()
        body = body[len(PYTHON_TAG):].strip() if body.startswith(PYTHON_TAG) else body
        obj = json_object(body) if body.startswith("{") else None
        if obj is None or obj.get("name") not in self.tools:
            return ParseResult(text)
        args = obj.get("parameters", obj.get("arguments", {}))
        args = args if isinstance(args, dict) else json_object(args) if isinstance(args, str) else None
        if args is None or set(obj) - {"name", "parameters", "arguments", "type"}:
            return ParseResult(text)
        return ParseResult(None, [ParsedToolCall(obj["name"], dump_arguments(args))])

    def stream_content(self, text: str) -> str:
        head = text.lstrip()
        # a reply that starts like a call is held whole; anything else is text from its first character
        if not head or head.startswith("{") or PYTHON_TAG.startswith(head[:len(PYTHON_TAG)]):
            return ""
        return text

    def call_shape(self, name: str) -> ToolCallShape:
        return ToolCallShape(name, f'{{"name": "{name}", "parameters": ', self.tools[name], "}")

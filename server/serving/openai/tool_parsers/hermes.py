"""Hermes / Qwen 2.5 / SmolLM2 tool calls: JSON inside `<tool_call>` ... `</tool_call>` tags.

    I'll check.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Several blocks mean parallel calls; text outside the blocks is content.
"""
from __future__ import annotations

import re

from model import ToolCallShape
from server.serving.openai.tool_parsers.base import (ParsedToolCall, ParseResult, ToolParser, dump_arguments, held_suffix,
                                              json_object)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)


class HermesParser(ToolParser):
    def parse(self, text: str) -> ParseResult:
        if OPEN not in text:
            return ParseResult(text)
        calls: list[ParsedToolCall] = []
        for block in _BLOCK.findall(text):
            obj = json_object(block.strip())
            args = _arguments(obj.get("arguments", {})) if obj else None
            if obj is None or obj.get("name") not in self.tools or args is None:
                return ParseResult(text)
            calls.append(ParsedToolCall(obj["name"], dump_arguments(args)))
        content = _BLOCK.sub("", text)
        if OPEN in content or not calls:  # an unterminated block
            return ParseResult(text)
        return ParseResult(content.strip() or None, calls)

    def stream_content(self, text: str) -> str:
        start = text.find(OPEN)
        if start != -1:
            return text[:start]
        return text[: len(text) - held_suffix(text, OPEN)]

    def call_shape(self, name: str) -> ToolCallShape:
        return ToolCallShape(name, f'{OPEN}\n{{"name": "{name}", "arguments": ', self.tools[name], f"}}\n{CLOSE}")


def _arguments(value: object) -> dict | None:
    """Arguments as an object; some models write them as a JSON string holding the object."""
    if isinstance(value, dict):
        return value
    return json_object(value) if isinstance(value, str) else None

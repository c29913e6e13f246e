"""GLM-4 tool calls (glm-4-9b-chat): an assistant turn whose metadata line is the tool's name and whose
body is the JSON arguments.

    <|assistant|>get_weather
    {"city": "Paris"}

A plain answer has an empty metadata line (`<|assistant|>\\n` + text). A reply may hold several turns
(text, then a call) separated by `<|assistant|>`; the prompt already opened the first one. A call is a
turn whose first line is exactly a declared tool name and whose body is a JSON object; a first line
that names no tool is ordinary text, and a turn that names a tool with a bad body is malformed.
"""
from __future__ import annotations

from typing import Any

from model import ToolCallShape
from server.serving.openai.tool_parsers.base import (ParsedToolCall, ParseResult, ToolParser, dump_arguments, held_suffix,
                                              json_object)

TURN = "<|assistant|>"


class Glm4Parser(ToolParser):
    needs_special_tokens = True

    def parse(self, text: str) -> ParseResult:
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        for i, turn in enumerate(text.split(TURN)):
            meta, newline, body = turn.partition("\n")
            name = meta.strip()
            if name in self.tools and newline:
                args = self.parse_arguments(body.strip(), name)
                if args is None:
                    return ParseResult(self.text_content(text))
                calls.append(ParsedToolCall(name, dump_arguments(args)))
            elif i > 0 and name:  # a later turn's metadata must name a tool
                return ParseResult(self.text_content(text))
            else:
                content.append(body if newline and not name else turn)
        joined = "\n".join(c for c in content if c.strip()) if calls else "".join(content)
        return ParseResult(joined or None, calls) if calls else ParseResult(self.text_content(text))

    def parse_arguments(self, body: str, name: str) -> dict[str, Any] | None:
        return json_object(body)

    def text_content(self, text: str) -> str:
        # the official template ends the prompt at `<|assistant|>`, so a text answer starts with "\n"
        text = text[1:] if text.startswith("\n") else text
        return text.replace(TURN, "")

    def stream_content(self, text: str) -> str:
        first, marker, _ = text.partition(TURN)
        meta, newline, body = first.partition("\n")
        name = meta.strip()
        if not newline:
            if not name or any(t.startswith(name) for t in self.tools):
                return ""  # the first line may still become a tool name
            visible = first
        elif not name:
            visible = body
        elif name in self.tools:
            return ""  # a call: held until it is complete and checked
        else:
            visible = first
        return visible if marker else visible[: len(visible) - held_suffix(visible, TURN)]

    def call_shape(self, name: str) -> ToolCallShape:
        return ToolCallShape(name, f"{name}\n", self.tools[name])

"""GLM-4.5 / 4.6 / 4.7 tool calls: XML-tagged arguments inside `<tool_call>` ... `</tool_call>`.

    GLM-4.5 / 4.6 (chat template, one tag per line):
        <tool_call>get_weather
        <arg_key>city</arg_key>
        <arg_value>Paris</arg_value>
        </tool_call>
    GLM-4.7 (name straight before the first key; a call without arguments is `<tool_call>NAME</tool_call>`):
        <tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>

Values are raw text: an argument whose schema type is string is taken as written, any other is
JSON-decoded (falling back to the raw string when it does not decode, as the model may quote loosely).
Each `<tool_call>` block is judged on its own: one naming a declared tool with well-formed pairs is a
call, anything else stays in the content as written. Whitespace around a call block is a separator and
dropped. The same scanner serves the finished text and the stream, so they agree however text is cut.
"""
from __future__ import annotations

import json
import re
from typing import Any

from model import ToolCallShape
from server.serving.openai.tool_parsers.base import (ParsedToolCall, ParseResult, ToolParser, dump_arguments,
                                                     held_suffix)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ARG_KEY = "<arg_key>"
_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>\s*", re.S)


def is_string_schema(schema: Any) -> bool:
    """The property is a string (so its value is written raw): type string, a string-only type list,
    an enum of strings, or an anyOf/oneOf of string schemas."""
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "string":
        return True
    if isinstance(kind, list):
        return bool(kind) and all(t in ("string", "null") for t in kind) and "string" in kind
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        return all(isinstance(v, str) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if kind is None and isinstance(options, list) and options:
            return all(is_string_schema(o) for o in options if o.get("type") != "null")
    return False


class Glm45Parser(ToolParser):
    streams_arguments = False  # arguments are XML: each call is sent whole once its block closes
    variant = "glm45"  # the grammar's layout; parsing accepts both

    def parse(self, text: str) -> ParseResult:
        scanner = self.scanner()
        scanner.push(text)
        scanner.finish()
        return ParseResult(scanner.content or None, scanner.calls)

    def scanner(self) -> "Glm45Scanner":
        return Glm45Scanner(self)

    def stream_content(self, text: str) -> str:
        scanner = self.scanner()
        scanner.push(text)
        return scanner.content

    def parse_block(self, block: str) -> ParsedToolCall | None:
        """The text between `<tool_call>` and `</tool_call>` as a call, or None when it is not one."""
        i = block.find(ARG_KEY)
        name, rest = (block.strip(), "") if i == -1 else (block[:i].strip(), block[i:])
        if name not in self.tools:
            return None
        properties = self.tools[name].get("properties") or {}
        args: dict[str, Any] = {}
        pos = 0
        while pos < len(rest):
            m = _PAIR.match(rest, pos)
            if m is None or m.end() == pos:
                return None
            key = m.group(1).strip()
            if not key or key in args:
                return None
            args[key] = self.typed_value(properties.get(key), m.group(2))
            pos = m.end()
        return ParsedToolCall(name, dump_arguments(args))

    @staticmethod
    def typed_value(schema: Any, raw: str) -> Any:
        if is_string_schema(schema):
            return raw
        try:
            return json.loads(raw.strip())
        except (json.JSONDecodeError, RecursionError):
            return raw

    def call_shape(self, name: str) -> ToolCallShape:
        sep = "\n" if self.variant == "glm45" else ""
        # GLM-4.5's template writes "\n<tool_call>" after </think> or content; GLM-4.7 writes it bare
        return ToolCallShape(name, f"{sep}{OPEN}{name}{sep}", self.tools[name], CLOSE, syntax="glm_xml",
                             separator=sep)


class Glm47Parser(Glm45Parser):
    variant = "glm47"


class Glm45Scanner:
    """Incremental: `push(delta)` / `finish()` return OpenAI delta dicts ({"content"} or a call's
    header and arguments); `content` and `calls` accumulate what was sent."""

    def __init__(self, parser: Glm45Parser) -> None:
        self.parser = parser
        self.pending = ""
        self.in_call = False
        self.held_ws = ""  # trailing whitespace of content: dropped if a call follows
        self.after_call = False  # drop whitespace right after a call
        self.ws_before_block = ""
        self.content = ""
        self.calls: list[ParsedToolCall] = []

    def push(self, delta: str) -> list[dict[str, Any]]:
        self.pending += delta
        return self._advance(final=False)

    def finish(self) -> list[dict[str, Any]]:
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            if not self.in_call:
                idx = self.pending.find(OPEN)
                if idx == -1:
                    keep = 0 if final else held_suffix(self.pending, OPEN)
                    text, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
                    self._text(text, out, flush=final)
                    return out
                self._text(self.pending[:idx], out, flush=False)
                # whitespace before a call block is a separator (restored if the block is no call)
                self.ws_before_block, self.held_ws = self.held_ws, ""
                self.pending, self.in_call = self.pending[idx + len(OPEN):], True
                continue
            idx = self.pending.find(CLOSE)
            if idx == -1:
                if final:  # an unterminated block (cut by max_tokens): text as written
                    self._raw(OPEN + self.pending, out)
                    self.pending, self.in_call = "", False
                return out
            block, self.pending, self.in_call = self.pending[:idx], self.pending[idx + len(CLOSE):], False
            call = self.parser.parse_block(block)
            if call is None:
                self._raw(OPEN + block + CLOSE, out)
                continue
            index = len(self.calls)
            self.calls.append(call)
            self.after_call = True
            out.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})

    def _text(self, text: str, out: list[dict[str, Any]], flush: bool) -> None:
        if self.after_call:
            text = text.lstrip()
            if not text:
                return
            self.after_call = False
        combined = self.held_ws + text
        body = combined if flush else combined.rstrip()
        self.held_ws = combined[len(body):]
        self._emit(body, out)

    def _raw(self, text: str, out: list[dict[str, Any]]) -> None:
        self.after_call = False
        self._emit(self.ws_before_block + text, out)
        self.ws_before_block = ""

    def _emit(self, text: str, out: list[dict[str, Any]]) -> None:
        if text:
            self.content += text
            out.append({"content": text})

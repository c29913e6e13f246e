"""What every tool-call parser shares: the parsed call, the parse result and the parser interface.

A parser reads one choice's finished text (`parse`) and, while it streams, says how much of it is
certainly content (`stream_content`). It never evaluates model output: arguments are JSON (or, for
ChatGLM3, Python literals read with `ast`), and a call counts only when it names a declared tool
exactly. Anything malformed comes back as the original text.
"""
from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from model import ToolCallShape


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object, as the OpenAI API carries it
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParseResult:
    content: str | None
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


def json_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object, or None (an arguments string holding an object is accepted too)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(value, str):
        return json_object(value) if value.lstrip().startswith("{") else None
    return value if isinstance(value, dict) else None


def dump_arguments(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False)


def held_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (text to hold back
    while streaming, as it may be the start of the marker)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolParser(ABC):
    """One published tool-call format. `tools` are the request's OpenAI tool definitions."""

    # GLM turns separate a text answer from a call with the <|assistant|> control token: the parser must
    # see it, so the request is detokenized with special tokens kept
    needs_special_tokens: bool = False
    # argument text of a call forced by the grammar is JSON and can be streamed as it is generated
    streams_arguments: bool = True

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools: dict[str, dict[str, Any]] = {}
        for tool in tools:
            fn = tool.get("function") or {}
            self.tools[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}

    @abstractmethod
    def parse(self, text: str) -> ParseResult:
        """The finished text as content and tool calls; malformed calls leave everything as content."""

    @abstractmethod
    def stream_content(self, text: str) -> str:
        """Content of the text generated so far that can no longer turn out to be part of a call.
        Grows monotonically as `text` grows and is a prefix of `parse(final_text).content`."""

    @abstractmethod
    def call_shape(self, name: str) -> ToolCallShape:
        """The exact text of a call of `name`, for the grammar that forces one."""

    def text_content(self, text: str) -> str:
        """The content when no call is present (overridden where the format adds framing)."""
        return text

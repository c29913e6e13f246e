"""One choice's streamed text -> chat.completion.chunk deltas with content and tool calls.

Two modes:
  checked (tool_choice auto): content streams as soon as the parser says it cannot belong to a call; a
      call is held until the choice finishes and parses, then sent as a header delta (id, name) and an
      arguments delta. A malformed call is never announced: it arrives as content.
  forced (tool_choice required / named function): the grammar makes the reply exactly one call in a
      known shape, so the header goes out once the tool name is generated and the JSON arguments stream
      as they are generated (ChatGLM3's Python arguments are sent whole at the end).
  scanned (parsers with a `scanner()`, GLM-4.5+ XML calls): the parser's own incremental scanner sends
      content as it streams and each call (header, then arguments) as soon as its block closes.
"""
from __future__ import annotations

from typing import Any

from model import ToolCallShape
from server.serving.openai.tool_parsers.base import ToolParser, held_suffix, new_call_id


class ToolCallStream:
    def __init__(self, parser: ToolParser, forced: list[ToolCallShape] | None = None) -> None:
        self.parser = parser
        self.forced = forced if forced and parser.streams_arguments else None
        self.text = ""
        self.content_sent = ""
        self.shape: ToolCallShape | None = None  # forced mode: the call being streamed
        self.call_id = new_call_id()
        self.arguments_sent = 0
        self.has_tool_calls = False
        make_scanner = getattr(parser, "scanner", None)
        self.scanner = make_scanner() if make_scanner is not None else None

    def push(self, delta: str) -> list[dict[str, Any]]:
        """Deltas to send for this piece of text (possibly none while text is held)."""
        self.text += delta
        if self.scanner is not None:
            return self._scanned(self.scanner.push(delta))
        if self.forced is not None:
            return self._forced_deltas(final=False)
        return self._content(self.parser.stream_content(self.text))

    def finish(self) -> list[dict[str, Any]]:
        """Deltas for the end of the choice; afterwards `has_tool_calls` tells the finish_reason."""
        if self.scanner is not None:
            return self._scanned(self.scanner.finish())
        if self.forced is not None and self.shape is not None:
            return self._forced_deltas(final=True)
        result = self.parser.parse(self.text)
        deltas = self._content(result.content or "")
        for index, call in enumerate(result.tool_calls):
            deltas += [_header(index, call.id, call.name), _arguments(index, call.arguments)]
        self.has_tool_calls = bool(result.tool_calls)
        return deltas

    def _scanned(self, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.has_tool_calls = self.has_tool_calls or any("tool_calls" in d for d in deltas)
        return deltas

    def _content(self, visible: str) -> list[dict[str, Any]]:
        if not visible.startswith(self.content_sent) or len(visible) == len(self.content_sent):
            return []
        new = visible[len(self.content_sent):]
        self.content_sent = visible
        return [{"content": new}]

    def _forced_deltas(self, final: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if self.shape is None:
            self.shape = next((s for s in self.forced or [] if self.text.startswith(s.begin)), None)
            if self.shape is None:
                return []
            deltas.append(_header(0, self.call_id, self.shape.name))
            self.has_tool_calls = True
        args = self.text[len(self.shape.begin):]
        end = self.shape.end
        if end and args.endswith(end):
            args = args[: len(args) - len(end)]
        elif end and not final:
            args = args[: len(args) - held_suffix(args, end)]
        if len(args) > self.arguments_sent:
            deltas.append(_arguments(0, args[self.arguments_sent:]))
            self.arguments_sent = len(args)
        return deltas


def _header(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": ""}}]}


def _arguments(index: int, arguments: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}


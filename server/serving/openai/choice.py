"""One choice's generated text as the API returns it: reasoning, content and tool calls.

    reasoning = plan_reasoning(state, body, prompt_ids)     # None when the request expects no reasoning
    usage = with_reasoning_tokens(usage, reasoning, [output_ids, ...])   # reasoning_tokens per request
    parsed = parse_choice(text, reasoning, tool_plan)       # ParsedChoice(reasoning, content, tool_calls)
    stream = ChoiceStream(reasoning, tool_plan)             # streamed: push(delta) / finish() -> deltas

The reasoning splitter runs first (server/serving/openai/reasoning.py); what it calls content goes on to
the tool-call parser, so a `<tool_call>` inside the think block stays reasoning and one after it is a
call. Streamed deltas are OpenAI chat-chunk delta dicts, each exactly one of
    {"reasoning_content": str, "reasoning": str}   (vLLM's older and newer field names, same text)
    {"content": str}
    {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}  (a call's header)
    {"tool_calls": [{"index", "function": {"arguments": str}}]}                     (argument text)
in that order per choice: all reasoning, then content and calls. Their concatenation per field equals
`parse_choice` on the whole text; the Responses and Anthropic adapters consume the same deltas.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model import ThinkSpan

from server.serving.openai.reasoning import (REASONING_FORMATS, ReasoningFormat, ReasoningSplitter,
                                             detect_reasoning_format, parse_reasoning, prompt_closes_reasoning,
                                             prompt_opens_reasoning)

if TYPE_CHECKING:
    from model import Tokenizer
    from server.protocol import ChatCompletionRequest, Usage
    from server.serving.openai.structured import ToolPlan
    from server.state import ServerState

log = logging.getLogger("glmserve.server")
PROMPT_TAIL_TOKENS = 8  # enough to see `<think>` / `</think>` at the end of a rendered prompt


@dataclass(frozen=True)
class ReasoningPlan:
    fmt: ReasoningFormat
    starts_inside: bool  # the prompt opened the think block
    span: ThinkSpan | None = None  # the markers as token ids (budget, grammar gate, reasoning_tokens)

    def num_reasoning_tokens(self, output_ids: list[int]) -> int:
        """Tokens of one choice's think block, its markers included (usage's reasoning_tokens)."""
        if self.span is None:
            return 0
        state, index = self.span.locate(output_ids)
        return index if state == "closed" else len(output_ids) if state == "open" else 0


def think_span(tokenizer: "Tokenizer", fmt: ReasoningFormat, starts_inside: bool) -> ThinkSpan:
    skip = [tokenizer.encode(ws) for ws in ("\n", "\n\n", " ")]  # what may precede `<think>`
    return ThinkSpan(tuple(tokenizer.encode(fmt.start, allow_special=True)),
                     tuple(tokenizer.encode(fmt.end, allow_special=True)), starts_inside,
                     frozenset(ids[0] for ids in skip if len(ids) == 1))


def with_reasoning_tokens(usage: "Usage", reasoning: ReasoningPlan | None, outputs: list[list[int]]) -> "Usage":
    """usage.completion_tokens_details.reasoning_tokens over the choices' output token ids."""
    if reasoning is not None:
        usage.completion_tokens_details.reasoning_tokens = sum(reasoning.num_reasoning_tokens(ids) for ids in outputs)
    return usage


@dataclass
class ParsedChoice:
    reasoning: str | None
    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped


def server_reasoning_format(state: "ServerState") -> tuple[ReasoningFormat | None, str]:
    """The server's reasoning parser (--reasoning-parser; auto reads the chat template) and why."""
    cached = getattr(state, "_reasoning_format", None)
    if cached is not None:
        return cached
    name = state.settings.reasoning_parser
    if name == "auto":
        detected = detect_reasoning_format(state.engine.chat_template.source)
        result = (REASONING_FORMATS[detected] if detected else None,
                  f"auto: {detected}" if detected else "auto: none (the chat template has no <think>)")
    elif name == "none":
        result = (None, "none")
    else:
        result = (REASONING_FORMATS[name], name)
    state._reasoning_format = result  # type: ignore[attr-defined]
    return result


def thinking_disabled(body: "ChatCompletionRequest") -> bool:
    kwargs = body.chat_template_kwargs or {}
    return kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False


def plan_reasoning(state: "ServerState", body: "ChatCompletionRequest", prompt_ids: list[int]) -> ReasoningPlan | None:
    """How this request's output is split: None when the server parses no reasoning, the request
    turned thinking off (enable_thinking: false) or the rendered prompt already closed the block."""
    fmt, _ = server_reasoning_format(state)
    if fmt is None or thinking_disabled(body):
        return None
    tokenizer = state.engine.tokenizer
    tail = tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
    if prompt_closes_reasoning(tail, fmt):
        return None
    inside = prompt_opens_reasoning(tail, fmt)
    return ReasoningPlan(fmt, inside, think_span(tokenizer, fmt, inside))


def parse_choice(text: str, reasoning: ReasoningPlan | None, tools: "ToolPlan | None") -> ParsedChoice:
    thought = None
    if reasoning is not None:
        split = parse_reasoning(text, reasoning.fmt, reasoning.starts_inside)
        thought, text = split.reasoning, split.content
    content, calls = tools.parse(text) if tools is not None else (text, [])
    # a reply of reasoning only has no content (null); without reasoning "" stays as generated
    return ParsedChoice(thought, content or None if (reasoning is not None or calls) else content, calls)


class ChoiceStream:
    """Deltas of one streamed choice (see the module docstring); `has_tool_calls` after finish()."""

    def __init__(self, reasoning: ReasoningPlan | None, tools: "ToolPlan | None") -> None:
        self.splitter = ReasoningSplitter(reasoning.fmt, reasoning.starts_inside) if reasoning else None
        self.tools = tools.stream() if tools is not None else None  # None: no tool parsing
        self.reasoning = ""
        self.content = ""
        self.calls: dict[int, dict[str, Any]] = {}

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.calls)

    def push(self, delta: str) -> list[dict[str, Any]]:
        if self.splitter is None:
            return self._content(delta, final=False)
        thought, content = self.splitter.push(delta)
        return self._reasoning(thought) + self._content(content, final=False)

    def finish(self) -> list[dict[str, Any]]:
        if self.splitter is None:
            return self._content("", final=True)
        thought, content = self.splitter.finish()
        return self._reasoning(thought) + self._content(content, final=True)

    def result(self) -> ParsedChoice:
        calls = [self.calls[i] for i in sorted(self.calls)]
        return ParsedChoice(self.reasoning or None, self.content or None, calls)

    def _reasoning(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.reasoning += text
        return [{"reasoning_content": text, "reasoning": text}]

    def _content(self, text: str, final: bool) -> list[dict[str, Any]]:
        if self.tools is None:
            deltas = [{"content": text}] if text else []
        else:
            deltas = self.tools.push(text) if text else []
            if final:
                deltas += self.tools.finish()
        for delta in deltas:
            self._record(delta)
        return deltas

    def _record(self, delta: dict[str, Any]) -> None:
        if "content" in delta:
            self.content += delta["content"]
        for call in delta.get("tool_calls", []):
            slot = self.calls.setdefault(call["index"], {"id": None, "type": "function",
                                                         "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                slot["id"] = call["id"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""

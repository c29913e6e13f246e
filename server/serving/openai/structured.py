"""Structured output for one chat request: `response_format` and `tools` / `tool_choice`.

    plan = plan_tools(state, body)                             # 400s for inconsistent tool fields
    ids = tool_template(state).encode(messages, tools)         # tools in the family's prompt format
    processors = await structured_output_processors(body, state, plan)   # grammar masks, compiled off-loop
    content, tool_calls = plan.parse(text)                     # or plan.stream() per streamed choice

tool_choice: "none" renders no tools and parses nothing; "auto" renders them and parses calls the model
chooses to make; "required" and a named function also force, by grammar, exactly one call of one (the
named) tool with schema-valid arguments. response_format json_object / json_schema constrain the reply
to JSON; with tools on auto the grammar allows either that JSON or a call.

GLM-4.5+ templates (they write `<arg_key>`) get the XML-call parser and grammar whatever the tool style.
When the request reasons (server/serving/openai/choice.py `plan_reasoning`), the grammar applies after
`</think>` only, and `thinking_token_budget` closes the block once that many reasoning tokens are out.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from model import (ReasoningGate, StructuredOutputError, StructuredOutputs, ThinkingBudgetProcessor, ToolCallShape,
                   ToolTemplate)
from server.errors import bad_request
from server.protocol import ChatCompletionRequest
from server.serving.openai.choice import ReasoningPlan, server_reasoning_format, thinking_disabled
from server.serving.openai.tool_parsers import ToolCallStream, ToolParser, parser_for, xml_call_variant
from server.state import ServerState

_templates: dict[int, ToolTemplate] = {}


def tool_template(state: ServerState) -> ToolTemplate:
    """The engine's chat template behind the tool bridge (one per template; detection reads the vocab)."""
    chat_template = state.engine.chat_template
    bridge = _templates.get(id(chat_template))
    if bridge is None or bridge.chat_template is not chat_template:
        bridge = _templates[id(chat_template)] = ToolTemplate(chat_template)
    return bridge


@dataclass
class ToolPlan:
    choice: str = "none"  # none | auto | required | named
    parser: ToolParser | None = None  # set unless choice is none
    forced: list[ToolCallShape] = field(default_factory=list)  # shapes the grammar allows (required/named)
    keep_special_tokens: bool = False  # the parsers must see control tokens (<|assistant|>, <think>)
    reasoning: ReasoningPlan | None = None  # set once the prompt is rendered (plan_reasoning)

    def with_reasoning(self, reasoning: ReasoningPlan | None) -> "ToolPlan":
        return dataclasses.replace(self, reasoning=reasoning)

    @property
    def renders_tools(self) -> bool:
        return self.choice != "none"

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, OpenAI tool_calls) of one finished choice."""
        if self.parser is None:
            return text, []
        result = self.parser.parse(text)
        return result.content, [c.to_openai() for c in result.tool_calls]

    def stream(self) -> ToolCallStream | None:
        return ToolCallStream(self.parser, self.forced or None) if self.parser is not None else None


def plan_tools(state: ServerState, body: ChatCompletionRequest) -> ToolPlan:
    tools = body.template_tools() or []
    choice, named = _tool_choice(body.tool_choice, bool(tools))
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tool names must be unique", param="tools")
    keep_special = _reasoning_markers_are_special(state, body)
    if choice == "none":
        return ToolPlan(keep_special_tokens=keep_special)
    if named is not None and named not in names:
        raise bad_request(f"tool_choice names function {named!r}, which is not in tools", param="tool_choice")
    bridge = tool_template(state)
    parser = parser_for(xml_call_variant(bridge.chat_template.source) or bridge.style, tools)
    forced = [parser.call_shape(n) for n in names if named in (None, n)] if choice in ("required", "named") else []
    return ToolPlan(choice, parser, forced, keep_special or parser.needs_special_tokens)


def _reasoning_markers_are_special(state: ServerState, body: ChatCompletionRequest) -> bool:
    """Whether decoding with skip_special_tokens would drop `<think>` / `</think>` / `<tool_call>` (special
    added tokens, as in the scripted test model; GLM-4.5's and Qwen3's own are added but not special): a
    reasoning request then keeps special tokens, or the parser could not see where thinking ends."""
    fmt, _ = server_reasoning_format(state)
    if fmt is None or thinking_disabled(body):
        return False
    tokenizer = state.engine.tokenizer
    return any(_dropped_when_skipping_specials(tokenizer, marker) for marker in fmt.markers)


@functools.lru_cache(maxsize=64)
def _dropped_when_skipping_specials(tokenizer: Any, marker: str) -> bool:
    ids = tokenizer.encode(marker, allow_special=True)
    return tokenizer.decode(ids, skip_special_tokens=True) != marker


def _tool_choice(value: str | dict[str, Any] | None, has_tools: bool) -> tuple[str, str | None]:
    """(none | auto | required | named, the named function)."""
    if value is None:
        return ("auto" if has_tools else "none"), None
    if value != "none" and not has_tools:
        raise bad_request("tool_choice is only allowed when tools are specified", param="tool_choice")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise bad_request(f"tool_choice must be none, auto, required or a function, got {value!r}",
                              param="tool_choice")
        return value, None
    function = value.get("function") if value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_request('tool_choice must look like {"type": "function", "function": {"name": ...}}',
                          param="tool_choice")
    return "named", name


def apply_plan(body: ChatCompletionRequest, plan: ToolPlan) -> ChatCompletionRequest:
    """The request as the engine should run it: GLM parsers need the <|assistant|> control token."""
    if plan.keep_special_tokens and body.skip_special_tokens:
        return body.model_copy(update={"skip_special_tokens": False})
    return body


async def structured_output_processors(body: ChatCompletionRequest, state: ServerState,
                                       plan: ToolPlan) -> tuple[Any, ...]:
    """Logits processors making the reply follow response_format / the forced tool call, after any
    reasoning, and keeping reasoning within thinking_token_budget (or nothing)."""
    span = plan.reasoning.span if plan.reasoning is not None else None
    budget = body.thinking_token_budget
    limits: tuple[Any, ...] = ()
    if span is not None and budget is not None:
        limits = (ThinkingBudgetProcessor(span, budget, _mid_character(state)),)
    grammar = await _grammar_processor(body, state, plan)
    if grammar is None:
        return limits
    return ((ReasoningGate(span, grammar) if span is not None else grammar),) + limits


def _mid_character(state: ServerState) -> Any:
    """Whether output ids end inside a UTF-8 character (their decoded tail is U+FFFD)."""
    tokenizer = state.engine.tokenizer
    return lambda ids: tokenizer.decode(ids[-4:], skip_special_tokens=False).endswith("\ufffd")


async def _grammar_processor(body: ChatCompletionRequest, state: ServerState, plan: ToolPlan) -> Any | None:
    schema = _response_schema(body)
    if not plan.forced and schema is None:
        return None
    engine = state.engine

    def build() -> Any:
        outputs = StructuredOutputs.for_tokenizer(engine.tokenizer, engine.model_config.vocab_size)
        if plan.forced:
            grammar = outputs.tool_calls(plan.forced)
        elif plan.parser is not None:  # auto: the JSON reply, or a call of any tool
            shapes = [plan.parser.call_shape(n) for n in plan.parser.tools]
            grammar = outputs.compile_any_of([("json_schema", schema), ("tool_calls", shapes)])
        else:
            grammar = outputs.json_schema(*schema)
        return outputs.processor(grammar, n=body.n)

    try:
        # compiling can take tens of milliseconds (the first one builds the vocabulary tables): off-loop
        return await asyncio.to_thread(build)
    except StructuredOutputError as e:
        raise bad_request(str(e), param=e.param) from e


def _response_schema(body: ChatCompletionRequest) -> tuple[dict[str, Any], bool] | None:
    """(JSON schema, strict) that response_format asks for, or None for plain text."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}, False
    spec = fmt.json_schema
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise bad_request('response_format json_schema needs {"name": ..., "schema": {...}}',
                          param="response_format")
    # strict unless the client says otherwise: the grammar then allows only the listed properties,
    # which a small model needs (free-form extras can run on until max_tokens) and which still validates
    return spec.get("schema") or {"type": "object"}, spec.get("strict") is not False

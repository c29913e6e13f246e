"""Tool-call parsers, one module per published format, chosen by the checkpoint's tool style
(model.ToolTemplate.style): glm4 (glm-4-9b-chat, GLM-4-0414), chatglm3, glm45 / glm47 (GLM-4.5+ XML
arguments), hermes (Qwen 2.5 / Qwen3 / SmolLM2 / ChatML), llama3.

    parser = parser_for("glm4", body_tools)        # -> ToolParser
    result = parser.parse(text)                     # ParseResult(content, tool_calls)
"""
from __future__ import annotations

from typing import Any

from server.serving.openai.tool_parsers.base import ParsedToolCall, ParseResult, ToolParser
from server.serving.openai.tool_parsers.chatglm3 import ChatGLM3Parser
from server.serving.openai.tool_parsers.glm4 import Glm4Parser
from server.serving.openai.tool_parsers.glm45 import Glm45Parser, Glm47Parser
from server.serving.openai.tool_parsers.hermes import HermesParser
from server.serving.openai.tool_parsers.llama3 import Llama3Parser
from server.serving.openai.tool_parsers.stream import ToolCallStream

PARSERS: dict[str, type[ToolParser]] = {"glm4": Glm4Parser, "chatglm3": ChatGLM3Parser, "glm45": Glm45Parser,
                                        "glm47": Glm47Parser, "hermes": HermesParser, "llama3": Llama3Parser}


def xml_call_variant(template_source: str | None) -> str | None:
    """glm45 / glm47 when the chat template writes GLM-4.5+ XML calls (`<arg_key>`), else None. GLM-4.7
    writes `</arg_key><arg_value>` with no newline between the tags."""
    source = template_source or ""
    if "<arg_key>" not in source:
        return None
    return "glm47" if "</arg_key><arg_value>" in source else "glm45"


def parser_for(style: str, tools: list[dict[str, Any]]) -> ToolParser:
    return PARSERS[style](tools)


__all__ = ["PARSERS", "ParseResult", "xml_call_variant", "ParsedToolCall", "ToolCallStream", "ToolParser", "parser_for"]

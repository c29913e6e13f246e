"""Tool-call parsers, one module per published format, chosen by the checkpoint's tool style
(model.ToolTemplate.style): glm4, chatglm3, hermes (Qwen 2.5 / SmolLM2 / ChatML), llama3.

    parser = parser_for("glm4", body_tools)        # -> ToolParser
    result = parser.parse(text)                     # ParseResult(content, tool_calls)
"""
from __future__ import annotations

from typing import Any

from server.serving.openai.tool_parsers.base import ParsedToolCall, ParseResult, ToolParser
from server.serving.openai.tool_parsers.chatglm3 import ChatGLM3Parser
from server.serving.openai.tool_parsers.glm4 import Glm4Parser
from server.serving.openai.tool_parsers.hermes import HermesParser
from server.serving.openai.tool_parsers.llama3 import Llama3Parser
from server.serving.openai.tool_parsers.stream import ToolCallStream

PARSERS: dict[str, type[ToolParser]] = {"glm4": Glm4Parser, "chatglm3": ChatGLM3Parser, "hermes": HermesParser,
                                        "llama3": Llama3Parser}


def parser_for(style: str, tools: list[dict[str, Any]]) -> ToolParser:
    return PARSERS[style](tools)


__all__ = ["PARSERS", "ParseResult", "ParsedToolCall", "ToolCallStream", "ToolParser", "parser_for"]

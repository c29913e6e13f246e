"""ChatGLM3 tool calls (chatglm3-6b, PROMPT.md): the metadata line is the tool's name, the body a Python
code block calling `tool_call` with keyword arguments.

    <|assistant|>get_weather
    ```python
    tool_call(city="Paris", days=3)
    ```

The official demo runs that body with eval(); here it is parsed with `ast` and only literal keyword
values are accepted (JSON's true/false/null too, as a grammar-forced call writes them), so no model
output is ever executed.
"""
from __future__ import annotations

import ast
from typing import Any

from model import ToolCallShape
from server.serving.openai.tool_parsers.glm4 import Glm4Parser

_JSON_NAMES = {"true": True, "false": False, "null": None}


class ChatGLM3Parser(Glm4Parser):
    streams_arguments = False  # the arguments are Python, not JSON: sent once the call is complete

    def parse_arguments(self, body: str, name: str) -> dict[str, Any] | None:
        lines = body.strip().split("\n")
        if len(lines) >= 2 and lines[0].strip().startswith("```") and lines[-1].strip() == "```":
            lines = lines[1:-1]
        try:
            call = ast.parse("\n".join(lines).strip(), mode="eval").body
        except (SyntaxError, ValueError, RecursionError):
            return None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
                and not call.args and all(k.arg is not None for k in call.keywords)):
            return None
        args: dict[str, Any] = {}
        for keyword in call.keywords:
            try:
                args[keyword.arg] = _literal(keyword.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return None
        return args

    def call_shape(self, name: str) -> ToolCallShape:
        return ToolCallShape(name, f"{name}\n```python\n", self.tools[name], "\n```", syntax="python_kwargs")


def _literal(node: ast.expr) -> Any:
    """ast.literal_eval, with JSON's literal names allowed anywhere inside the value."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking is not a literal")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    value = ast.literal_eval(node)
    if isinstance(value, (set, tuple, complex, bytes)):
        raise ValueError("only JSON-representable literals are arguments")
    return value

"""Tools in the prompt: OpenAI `tools`, assistant `tool_calls` and `role: "tool"` messages rendered in the
format the checkpoint's family was trained on.

    bridge = ToolTemplate(engine.chat_template)          # style detected from the template and tokenizer
    ids = bridge.encode(messages, tools)                  # -> prompt token ids

Styles (each the published format of its family):
  glm4      GLM-4: tools in a `<|system|>` block ("# 可用工具", one `## name` + JSON per tool), a call is
            `<|assistant|>name\\n{json args}`, a result is `<|observation|>\\n...`.
  chatglm3  ChatGLM3: tools as a JSON list in the system prompt, a call is `<|assistant|>name\\n` +
            "```python\\ntool_call(k=v)\\n```", a result is `<|observation|>\\n...`.
  hermes    Qwen 2.5 / Hermes / SmolLM2 (ChatML): `<tools>` in the system prompt, a call is
            `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, results in `<tool_response>`.
  llama3    Llama 3.1+: the checkpoint's own template renders tools; a call is {"name", "parameters"}.

A checkpoint template that renders OpenAI-shaped tools itself (it uses the `tools` variable) is used as
is. Otherwise GLM-family prompts come from the published-format templates below and ChatML prompts are
rewritten into plain messages before the checkpoint's template renders them. Client-supplied text that
the template emits verbatim (tool schemas, tool names) has special-token strings broken, so a tool
description can never open a new turn.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal

from model.chat_template import ChatTemplate, ChatTemplateError

ToolStyle = Literal["glm4", "chatglm3", "hermes", "llama3"]
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

GLM4_SYSTEM = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
               "你的任务是针对用户的问题和要求提供适当的答复和支持。")
GLM4_TOOL_SUFFIX = "在调用上述函数时，请使用 Json 格式表示调用的参数。"
CHATGLM3_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"

# GLM-4 (glm-4-9b-chat) layout over GLM-native messages: roles system/user/assistant/observation and
# `metadata` (the called tool's name) on assistant turns.
GLM4_TOOLS_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>\n" + GLM4_SYSTEM + "\n\n# 可用工具"
    "{%- for tool in tools +%}\n\n## {{ tool.function.name }}\n\n{{ tool.function | tojson(indent=4) }}\n"
    + GLM4_TOOL_SUFFIX + "{%- endfor -%}{%- endif -%}"
    "{%- for m in messages -%}<|{{ m.role }}|>{{ m.metadata or '' }}\n{{ m.content }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
# ChatGLM3 (chatglm3-6b, PROMPT.md): the tools list follows the system prompt as indented JSON.
CHATGLM3_TOOLS_TEMPLATE = (
    "[gMASK]sop"
    "{%- if tools -%}<|system|>\n" + CHATGLM3_SYSTEM + "\n{{ tools | map(attribute='function') | list"
    " | tojson(indent=4) }}{%- endif -%}"
    "{%- for m in messages -%}<|{{ m.role }}|>{{ m.metadata or '' }}\n{{ m.content }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
HERMES_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>")


def detect_tool_style(template_source: str, special_tokens: list[str] | set[str]) -> ToolStyle:
    """The family's tool format, from its control tokens: GLM has `<|observation|>` (GLM-4 opens with
    `<sop>`, ChatGLM3 with a bare `sop`), Llama 3 has `<|start_header_id|>`, the rest speak Hermes."""
    specials = set(special_tokens)
    if "<|observation|>" in specials or "<|observation|>" in template_source:
        if "<sop>" not in specials and "sop" in specials:
            return "chatglm3"
        return "glm4"
    if "<|start_header_id|>" in template_source and renders_tools(template_source):
        return "llama3"
    return "hermes"


def renders_tools(template_source: str) -> bool:
    """The template takes OpenAI-shaped `tools` itself (not GLM's per-message item['tools'] + metadata)."""
    return (re.search(r"\btools\b", template_source) is not None and "item['tools']" not in template_source
            and "metadata" not in template_source)


class ToolTemplate:
    """Renders chats that carry tools, tool calls or tool results; plain chats go straight through."""

    def __init__(self, chat_template: ChatTemplate, style: ToolStyle | None = None,
                 use_checkpoint_template: bool | None = None) -> None:
        """`use_checkpoint_template` None: use it when it renders OpenAI tools; False: always bridge."""
        self.chat_template = chat_template
        tok = chat_template.tokenizer
        self.style: ToolStyle = style or detect_tool_style(chat_template.source, tok.special_token_strings)
        # glmserve's GLM fallback template speaks GLM-4, never ChatGLM3's python tool_call format
        native = renders_tools(chat_template.source) and not (self.style == "chatglm3" and chat_template.is_default_glm)
        self.native = native if use_checkpoint_template is None else (use_checkpoint_template and native)
        own = {"glm4": GLM4_TOOLS_TEMPLATE, "chatglm3": CHATGLM3_TOOLS_TEMPLATE}.get(self.style)
        self._own = ChatTemplate(tok, own) if own and not self.native else None

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        template, messages, tools = self._prepare(messages, tools)
        return template.encode(messages, tools, add_generation_prompt, **extra)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        template, messages, tools = self._prepare(messages, tools)
        return template.render(messages, tools, add_generation_prompt, **extra)

    def _prepare(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                 ) -> tuple[ChatTemplate, list[dict[str, Any]], list[dict[str, Any]] | None]:
        uses_tools = bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
        if not uses_tools:
            return self.chat_template, messages, tools
        tools = self._neutralize(tools) if tools else None
        messages = [{**m, "tool_calls": self._neutralize(m["tool_calls"])} if m.get("tool_calls") else m
                    for m in messages]
        for tool in tools or []:
            _check_name(tool.get("function", {}).get("name"))
        if self.native:
            return self.chat_template, messages, tools
        if self._own is not None:
            return self._own, glm_messages(messages, python_kwargs=self.style == "chatglm3"), tools
        return self.chat_template, hermes_messages(messages, tools), None

    def _neutralize(self, value: Any) -> Any:
        if isinstance(value, str):
            for tok in self.chat_template.tokenizer.special_token_strings:
                if tok and tok in value:
                    value = value.replace(tok, tok[0] + "\u200b" + tok[1:])
            return value
        if isinstance(value, list):
            return [self._neutralize(v) for v in value]
        if isinstance(value, dict):
            return {k: self._neutralize(v) for k, v in value.items()}
        return value


# ---- message rewrites ------------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ChatTemplateError(f"tool name {name!r} must match {TOOL_NAME.pattern}")
    return name


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    args = call.get("function", {}).get("arguments", "{}")
    try:
        value = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError as e:
        raise ChatTemplateError(f"tool call arguments are not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ChatTemplateError("tool call arguments must be a JSON object")
    return value


def python_literal(value: Any) -> str:
    """A Python literal for a JSON value, strings double-quoted as in ChatGLM3's examples."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {python_literal(v)}"
                           for k, v in value.items()) + "}"


def chatglm3_call_body(arguments: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={python_literal(v)}" for k, v in arguments.items())
    return f"```python\ntool_call({kwargs})\n```"


def glm_messages(messages: list[dict[str, Any]], python_kwargs: bool) -> list[dict[str, Any]]:
    """OpenAI messages -> GLM-native turns: tool results become `observation`, each tool call its own
    assistant turn with the tool name as metadata and the arguments as content."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content") or ""
        if role == "tool":
            out.append({"role": "observation", "content": content})
        elif role == "assistant" and m.get("tool_calls"):
            if content:
                out.append({"role": "assistant", "content": content})
            for call in m["tool_calls"]:
                args = _arguments(call)
                body = chatglm3_call_body(args) if python_kwargs else json.dumps(args, ensure_ascii=False)
                out.append({"role": "assistant", "metadata": _check_name(call.get("function", {}).get("name")),
                            "content": body})
        else:
            out.append({"role": role, "content": content})
    return out


def hermes_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI messages -> plain ChatML turns in the Qwen 2.5 / Hermes layout."""
    out: list[dict[str, Any]] = []
    rest = list(messages)
    if tools:
        block = HERMES_TOOLS_PROMPT.format(tools="".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools))
        system = ""
        if rest and rest[0].get("role") == "system":
            system = (rest.pop(0).get("content") or "") + "\n\n"
        out.append({"role": "system", "content": system + block})
    for m in rest:
        role, content = m.get("role"), m.get("content") or ""
        if role == "tool":
            text = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool_responses": True})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [json.dumps({"name": _check_name(c.get("function", {}).get("name")), "arguments": _arguments(c)},
                                ensure_ascii=False) for c in m["tool_calls"]]
            blocks = "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
            out.append({"role": "assistant", "content": (content + "\n" if content else "") + blocks})
        else:
            out.append({**{k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")}, "content": content})
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in out]

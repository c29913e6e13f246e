"""Tools in the prompt: OpenAI `tools`, assistant `tool_calls` and `role: "tool"` messages rendered in the
format the checkpoint's family was trained on.

    bridge = ToolTemplate(engine.chat_template)          # style and mode detected from template and tokenizer
    ids = bridge.encode(messages, tools)                  # -> prompt token ids

Styles (each the published format of its family; the tool-call parsers are chosen by it):
  glm4      GLM-4 (glm-4-9b-chat, -hf, GLM-4-0414, Z1): a call is `<|assistant|>name\n{json args}`, a result
            `<|observation|>\n...`; tools in a `<|system|>` block ("# 可用工具", one `## name` + JSON per tool).
  chatglm3  ChatGLM3: tools as a JSON list after the system prompt, a call is `<|assistant|>name\n` +
            "```python\ntool_call(k=v)\n```", a result `<|observation|>\n...`.
  glm45     GLM-4.5 / 4.6 (and glm47, GLM-4.7): the checkpoint's template writes `<tool_call>name` + XML
            `<arg_key>/<arg_value>` calls itself.
  hermes    Qwen 2.5 / Qwen3 / Hermes / SmolLM2 (ChatML): `<tools>` in the system prompt, a call is
            `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, results in `<tool_response>`.
  llama3    Llama 3.1+: the checkpoint's own template renders tools; a call is {"name", "parameters"}.

The checkpoint's own template is used as written whenever it takes tools: OpenAI messages as they are
(GLM-4.5, Qwen, Llama), GLM turns (`observation` role, `metadata` = the called tool) with `tools` for
GLM-4-0414's template, GLM turns with the tools on the system turn for glm-4-9b-chat's
(`item['tools']`), and ChatGLM3's own segment-wise encoding with the function list on its system turn.
Templates that ignore tools get the published layouts below (GLM) or a ChatML rewrite (Hermes). A
client's system message and the tools share one system turn where the family's format merges them.
Client-supplied text that the template emits verbatim (tool schemas, tool names) has special-token
strings broken, so a tool description can never open a new turn.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal

from model.chat_template import ChatTemplate, ChatTemplateError

ToolStyle = Literal["glm4", "chatglm3", "glm45", "glm47", "hermes", "llama3"]
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
# ChatGLM3 (chatglm3-6b, build_chat_input) as text, for tokenizers that are not ChatGLM3's own: a system
# turn's `tools` follow its content as indented JSON.
CHATGLM3_TOOLS_TEMPLATE = (
    "[gMASK]sop"
    "{%- for m in messages -%}<|{{ m.role }}|>{{ m.metadata or '' }}\n{{ m.content }}"
    "{%- if m.tools is defined and m.tools is not none %}{{ '\\n' ~ (m.tools | tojson(indent=4)) }}{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
HERMES_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>")

# How a checkpoint template takes tools: glm-4-9b-chat reads them off a message (`item['tools']`);
# GLM-4-0414 reads `tools` but wants GLM turns (`role == 'observation'`, `metadata`); GLM-4.5+, Qwen,
# Llama 3.1 read OpenAI-shaped `tools`, `tool_calls` and `role: tool` themselves.
_TOOLS_ON_MESSAGE = re.compile(r"\[\s*['\"]tools['\"]\s*\]")
_GLM_TURNS = re.compile(r"==\s*['\"]observation['\"]")


def detect_tool_style(template_source: str, special_tokens: list[str] | set[str], family: str = "hf") -> ToolStyle:
    """The family's tool format. ChatGLM3 is known from its tokenizer (config.json's model_type and a
    SentencePiece tokenizer.model); GLM-4.5+ templates write `<arg_key>` XML calls (GLM-4.7 without a
    newline between the tags); other GLM has `<|observation|>` (ChatGLM3-style vocabularies open with a
    bare `sop`); Llama 3 has `<|start_header_id|>`; the rest speak Hermes."""
    if family == "chatglm3":
        return "chatglm3"
    if "<arg_key>" in template_source:
        return "glm47" if "</arg_key><arg_value>" in template_source else "glm45"
    specials = set(special_tokens)
    if "<|observation|>" in specials or "<|observation|>" in template_source:
        if "<sop>" not in specials and "sop" in specials:
            return "chatglm3"
        return "glm4"
    if "<|start_header_id|>" in template_source and renders_tools(template_source):
        return "llama3"
    return "hermes"


_MAPPING_ARGUMENTS = re.compile(r"arguments\s*(\|\s*tojson|\.items\(\)|is\s+mapping)")


def renders_tools(template_source: str) -> bool:
    """The template takes the `tools` variable itself (not glm-4-9b-chat's per-message item['tools'])."""
    return re.search(r"\btools\b", template_source) is not None and not _TOOLS_ON_MESSAGE.search(template_source)


class ToolTemplate:
    """Renders chats that carry tools, tool calls or tool results; plain chats go straight through.

    `mode` says how: "native" (the checkpoint template, OpenAI messages), "glm_turns" (the checkpoint
    template over GLM turns), "message_tools" (GLM turns, tools on the system turn: glm-4-9b-chat),
    "chatglm3" (ChatGLM3's own encoding, tools on the system turn), "own" (the published layout below,
    for templates that ignore tools) or "hermes" (ChatML rewrite)."""

    def __init__(self, chat_template: ChatTemplate, style: ToolStyle | None = None,
                 use_checkpoint_template: bool | None = None) -> None:
        """`use_checkpoint_template` None: use it when it renders tools; False: always bridge."""
        self.chat_template = chat_template
        tok = chat_template.tokenizer
        source = chat_template.source
        self.style: ToolStyle = style or detect_tool_style(source, tok.special_token_strings,
                                                           getattr(tok, "family", "hf"))
        glm = self.style in ("glm4", "chatglm3")
        if chat_template.segmentwise:
            mode = "chatglm3"
        elif glm and _TOOLS_ON_MESSAGE.search(source):
            mode = "message_tools"
        # glmserve's GLM fallback template speaks GLM-4, never ChatGLM3's python tool_call format
        elif renders_tools(source) and not (self.style == "chatglm3" and chat_template.is_default_glm):
            mode = "glm_turns" if glm and _GLM_TURNS.search(source) else "native"
        else:
            mode = "own" if glm else "hermes"
        if use_checkpoint_template is False and mode not in ("own", "hermes"):
            mode = "own" if glm else "hermes"
        self.mode = mode
        self.native = mode not in ("own", "hermes")
        # a template that reads a call's arguments as a mapping gets them parsed; one that prints them
        # (glm-4-9b-chat-hf, GLM-4-0414) gets the JSON string the client sent
        self.mapping_arguments = _MAPPING_ARGUMENTS.search(source) is not None
        own = {"glm4": GLM4_TOOLS_TEMPLATE, "chatglm3": CHATGLM3_TOOLS_TEMPLATE}.get(self.style)
        self._own = ChatTemplate(tok, own) if own and mode == "own" else None

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
        uses_tools = bool(tools) or any(m.get("role") in ("tool", "function") or m.get("tool_calls") for m in messages)
        if not uses_tools:
            return self.chat_template, messages, tools
        tools = self._neutralize(tools) if tools else None
        messages = [{**m, "tool_calls": self._neutralize(m["tool_calls"])} if m.get("tool_calls") else m
                    for m in messages]
        for tool in tools or []:
            _check_name(tool.get("function", {}).get("name"))
        mode = self.mode
        if mode == "native":
            return self.chat_template, mapping_arguments(messages) if self.mapping_arguments else messages, tools
        if mode == "hermes":
            return self.chat_template, hermes_messages(messages, tools), None
        turns = glm_messages(messages, python_kwargs=self.style == "chatglm3")
        if mode == "glm_turns":
            return self.chat_template, turns, tools
        if mode == "message_tools":
            return self.chat_template, with_system_tools(turns, tools, ""), None
        functions = [t.get("function", t) for t in tools] if tools else None
        if self.style == "chatglm3":  # ChatGLM3's tool demo: function descriptions on the system turn
            template = self.chat_template if mode == "chatglm3" else self._own
            return template, with_system_tools(turns, functions, CHATGLM3_SYSTEM), None
        return self._own, turns, tools

    def _neutralize(self, value: Any) -> Any:
        if self.chat_template.segmentwise:  # ChatGLM3 encodes all client text with SentencePiece alone
            return value                    # (and its "sop" / "eop" are ordinary words there)
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


def with_system_tools(turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      intro: str) -> list[dict[str, Any]]:
    """The tools on one system turn: the client's system message (its text, then `intro`) or a new first
    turn holding `intro`."""
    if not tools:
        return turns
    for i, turn in enumerate(turns):
        if turn.get("role") == "system":
            content = "\n".join(t for t in (turn.get("content") or "", intro) if t)
            return [*turns[:i], {"role": "system", "content": content, "tools": tools}, *turns[i + 1:]]
    return [{"role": "system", "content": intro, "tools": tools}, *turns]


# ---- message rewrites ------------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ChatTemplateError(f"tool name {name!r} must match {TOOL_NAME.pattern}")
    return name


def mapping_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls with their `arguments` as a mapping, for templates that read them so
    (transformers' convention; GLM-4.5's template renders `arguments.items()` and wrote no arguments for
    a string). The wire sends a JSON string; one that is not a JSON object stays as it came."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    try:
                        value = json.loads(fn["arguments"])
                    except json.JSONDecodeError:
                        value = None
                    if isinstance(value, dict):
                        call = {**call, "function": {**fn, "arguments": value}}
                fixed.append(call)
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


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
        if role in ("tool", "function"):  # `function` is the legacy OpenAI name of a tool result
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

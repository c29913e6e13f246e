"""Chat messages (+ tools) -> prompt token ids through the checkpoint's jinja chat template.

Checkpoints without a template get the GLM-4 / ChatGLM3 format. Message content is user data: it is
encoded with special tokens split into plain text, so typing "<|im_start|>system" inside a message can
never open a new turn. The template's own text is encoded with special tokens recognized.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model.tokenizer import Tokenizer

# GLM-4 chat format (ChatGLM3 uses the same role tokens); `[gMASK]<sop>` opens every prompt.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>\n# Available tools\n{%- for tool in tools %}\n\n## {{ tool.function.name }}\n\n"
    "{{ tool.function | tojson(indent=4) }}\nCall this tool when needed; reply with the tool name on one line and "
    "its JSON arguments on the next.{%- endfor %}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'tool' -%}<|observation|>\n{{ message.content }}"
    "{%- elif message.role == 'assistant' and message.tool_calls -%}"
    "{%- for tc in message.tool_calls -%}<|assistant|>{{ tc.function.name }}\n{{ tc.function.arguments }}{%- endfor -%}"
    "{%- else -%}<|{{ message.role }}|>\n{{ message.content }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (e.g. the template rejects the role order)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    def __init__(self, tokenizer: Tokenizer, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.source = template or tokenizer.chat_template or GLM_CHAT_TEMPLATE
        self.is_default_glm = self.source == GLM_CHAT_TEMPLATE
        self._template = _environment().from_string(self.source)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        try:
            return self._template.render(
                messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                bos_token=self.tokenizer.bos_token or "", eos_token=self.tokenizer.eos_token or "", **extra)
        except ChatTemplateError:
            raise
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from e

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        """Prompt token ids, with message contents encoded as plain text (no control tokens)."""
        marker = f"\x00{secrets.token_hex(6)}\x00"
        masked = []
        contents: list[str] = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and content:
                masked.append({**message, "content": f"{marker}{len(contents)}{marker}"})
                contents.append(content)
            else:
                masked.append(message)
        rendered = self.render(masked, tools, add_generation_prompt, **extra)
        parts = rendered.split(marker)
        # parts alternate template text / content index when the template kept each content intact
        if len(parts) != 2 * len(contents) + 1 or any(parts[i] != str((i - 1) // 2) for i in range(1, len(parts), 2)):
            return self._encode_neutralized(messages, tools, add_generation_prompt, **extra)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                ids += self.tokenizer.encode(part, allow_special=True) if part else []
            else:
                ids += self.tokenizer.encode(contents[int(part)], allow_special=False)
        return ids

    def _encode_neutralized(self, messages, tools, add_generation_prompt, **extra) -> list[int]:
        # The template transformed the content (e.g. stripped it): render real text, but break every
        # special-token string inside contents with a zero-width space so none becomes a control token.
        safe = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                for tok in self.tokenizer.special_token_strings:
                    if tok and tok in content:
                        content = content.replace(tok, tok[0] + "\u200b" + tok[1:])
                message = {**message, "content": content}
            safe.append(message)
        return self.tokenizer.encode(self.render(safe, tools, add_generation_prompt, **extra), allow_special=True)

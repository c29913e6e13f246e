"""Chat messages (+ tools) -> prompt token ids through the checkpoint's jinja chat template.

Checkpoints without a template get the GLM-4 format. The rendered text is encoded as the checkpoint's
own tokenizer encodes it (the text between the template's control tokens in one piece), except that
message content is user data: a control-token string inside a message stays plain text, so typing
"<|im_start|>system" can never open a new turn.

ChatGLM3 (THUDM/chatglm3-6b) is encoded as its `build_chat_input` does instead of through its jinja:
`[gMASK] sop`, then per turn `<|role|>` + encode(metadata + "\n") + encode(content), each segment on its
own (SentencePiece adds its dummy prefix to each), then `<|assistant|>`.
"""
from __future__ import annotations

import json
import re
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
        # ChatGLM3's checkpoint template only approximates its tokenizer's segment-wise encoding
        self.segmentwise = getattr(tokenizer, "family", "hf") == "chatglm3" and template is None
        self._template = _environment().from_string(self.source)
        specials = [t for t in tokenizer.special_token_strings if t]
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        if self.segmentwise:
            return self.tokenizer.decode(self.encode(messages, tools, add_generation_prompt, **extra),
                                         skip_special_tokens=False)
        try:
            return self._template.render(
                messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                bos_token=self.tokenizer.bos_token or "", eos_token=self.tokenizer.eos_token or "", **extra)
        except ChatTemplateError:
            raise
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from e
        except (TypeError, AttributeError, KeyError, IndexError) as e:  # a template reading a field we lack
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        """Prompt token ids, with message contents encoded as plain text (no control tokens)."""
        if self.segmentwise:
            return chatglm3_prompt_ids(self.tokenizer, messages, tools, add_generation_prompt)
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
        # parts alternate template text / content index when the template kept each content intact; a
        # template that edits content (strip, split on </think>) edits the marker instead, which
        # substituting the contents back would not reproduce
        if len(parts) != 2 * len(contents) + 1 or any(parts[i] != str((i - 1) // 2) for i in range(1, len(parts), 2)) \
                or "".join(p if i % 2 == 0 else contents[int(p)] for i, p in enumerate(parts)) \
                != self.render(messages, tools, add_generation_prompt, **extra):
            return self._encode_neutralized(messages, tools, add_generation_prompt, **extra)
        return self._encode_parts([(part, True) if i % 2 == 0 else (contents[int(part)], False)
                                   for i, part in enumerate(parts)])

    def _encode_parts(self, parts: list[tuple[str, bool]]) -> list[int]:
        """(text, is_template) pieces -> ids: control-token strings are split out of template text only;
        the text between two control tokens is encoded in one piece, contents included, as the
        reference tokenizer encodes the whole rendered string."""
        ids: list[int] = []
        run: list[str] = []
        for text, is_template in parts:
            pieces = self._special_split.split(text) if is_template and self._special_split else [text]
            for j, piece in enumerate(pieces):
                if j % 2 == 0:
                    run.append(piece)
                    continue
                if "".join(run):
                    ids += self.tokenizer.encode("".join(run), allow_special=False)
                run = []
                ids += self.tokenizer.encode(piece, allow_special=True)
        if "".join(run):
            ids += self.tokenizer.encode("".join(run), allow_special=False)
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


CHATGLM3_ROLES = ("system", "user", "assistant", "observation")


def chatglm3_prompt_ids(tokenizer: Tokenizer, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                        add_generation_prompt: bool = True) -> list[int]:
    """ChatGLM3's published chat encoding over GLM turns ({role, content, metadata?}; a system turn may carry
    `tools`, a list of function descriptions appended to its content as indented JSON). `tools` given
    here without such a turn opens the chat with one, as ChatGLM3's tool demo does."""
    special = tokenizer.hf.special_ids
    if tools and not any(t.get("role") == "system" and t.get("tools") is not None for t in turns):
        turns = [{"role": "system", "content": "", "tools": [t.get("function", t) for t in tools]}, *turns]
    ids = list(tokenizer.hf.prefix_token_ids)
    for turn in turns:
        role = turn.get("role")
        if role not in CHATGLM3_ROLES:
            raise ChatTemplateError(f"ChatGLM3 has no {role!r} role; roles are {', '.join(CHATGLM3_ROLES)}")
        content = turn.get("content") or ""
        if not isinstance(content, str):
            raise ChatTemplateError("ChatGLM3 message content must be text")
        if role == "system" and turn.get("tools") is not None:
            content = content + "\n" + json.dumps(turn["tools"], indent=4, ensure_ascii=False)
        ids.append(special[f"<|{role}|>"])
        ids += tokenizer.encode(f"{turn.get('metadata') or ''}\n")
        ids += tokenizer.encode(content)
    if add_generation_prompt:
        ids.append(special["<|assistant|>"])
    return ids

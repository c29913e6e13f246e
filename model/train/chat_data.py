"""Chat JSONL for supervised fine-tuning: parsing, validation and assistant-only labels.

Accepted lines (one conversation each):
    OpenAI   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...], "tools": [...]}
    ChatGLM  {"conversations": [{"role": "user"|"assistant"|"system"|"observation", "content": "..."}, ...]}
             (ShareGPT-style {"from": "human"|"gpt", "value": "..."} turns are accepted too)

A conversation is rendered with the checkpoint's own chat template. The loss covers only the
assistant's tokens: each assistant turn's tokens are found as the difference between the rendering up
to that turn with the generation prompt and the rendering that includes the turn. The token that ends
the turn (the template's own end marker, GLM's next role token, or an appended eos) is a target too,
so the model learns to stop. Bad lines are collected with their line numbers and raised together.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from model.chat_template import ChatTemplate, ChatTemplateError
from model.tool_template import ToolTemplate

# ToolTemplate in training: tool calls are rendered in the family's format, as the server prompts them
Template = ChatTemplate | ToolTemplate
from model.train.data import IGNORE_INDEX, DataError, TokenDataset

log = logging.getLogger("glmserve.train")

_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                 "system": "system", "tool": "tool", "observation": "tool", "function": "tool"}


class _BadLine(ValueError):
    pass


def normalize_conversation(obj: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """One JSONL object -> (messages in OpenAI roles, tools or None); raises _BadLine with the reason."""
    if not isinstance(obj, dict):
        raise _BadLine("not a JSON object")
    turns = obj.get("messages", obj.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise _BadLine('needs a non-empty "messages" (OpenAI) or "conversations" (ChatGLM) list')
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _BadLine(f"turn {i} is not an object")
        raw_role = turn.get("role", turn.get("from"))
        role = _ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise _BadLine(f"turn {i} has unknown role {raw_role!r}")
        content = turn.get("content", turn.get("value"))
        tool_calls = turn.get("tool_calls")
        if not isinstance(content, str) and not (role == "assistant" and tool_calls):
            raise _BadLine(f"turn {i} ({role}) has no string content")
        message: dict[str, Any] = {"role": role, "content": content if isinstance(content, str) else ""}
        if tool_calls:
            message["tool_calls"] = tool_calls
        messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise _BadLine("no assistant turn to learn from")
    tools = obj.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _BadLine('"tools" must be a list')
    return messages, tools or None


def encode_conversation(template: Template, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                        stop_ids: set[int], eos_id: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE_INDEX everywhere except assistant turns."""
    ids = template.encode(messages, tools, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.encode(messages[:i], tools, add_generation_prompt=True)
        upto = template.encode(messages[: i + 1], tools, add_generation_prompt=False)
        if upto[: len(prompt)] != prompt or ids[: len(upto)] != upto:
            raise _BadLine(f"the chat template renders turn {i} differently depending on what follows; "
                           "assistant tokens cannot be located")
        labels[len(prompt): len(upto)] = ids[len(prompt): len(upto)]
        if not stop_ids.intersection(upto[len(prompt):]):
            # the template has no end-of-turn marker of its own (GLM): the next token must stop the turn
            if len(upto) < len(ids) and ids[len(upto)] in stop_ids:
                labels[len(upto)] = ids[len(upto)]
            elif len(upto) == len(ids):
                ids.append(eos_id)
                labels.append(eos_id)
    return ids, labels


def load_chat_jsonl(path: str, template: Template, stop_ids: set[int], eos_id: int, pad_id: int,
                    max_len: int, skip_bad_lines: bool = False) -> TokenDataset:
    """Every conversation of a chat JSONL file, truncated to max_len tokens.

    A line that is malformed, or that keeps no assistant token within max_len, is a problem: all
    problems are raised together as a DataError, or logged one by one and skipped with skip_bad_lines."""
    inputs, targets, problems = [], [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages, tools = normalize_conversation(json.loads(line))
                ids, labels = encode_conversation(template, messages, tools, stop_ids, eos_id)
            except json.JSONDecodeError as e:
                problems.append((line_no, f"invalid JSON: {e.msg} at column {e.colno}"))
                continue
            except (_BadLine, ChatTemplateError) as e:
                problems.append((line_no, str(e)))
                continue
            ids, labels = ids[:max_len], labels[:max_len]
            if all(t == IGNORE_INDEX for t in labels[1:]):
                problems.append((line_no, f"no assistant token within max_len={max_len}"))
                continue
            inputs.append(ids)
            targets.append(labels)
    if problems:
        error = DataError(path, problems)
        if not skip_bad_lines:
            raise error
        log.warning("skipping %s", error)
    if not inputs:
        raise ValueError(f"{path} holds no usable conversation")
    return TokenDataset(inputs, targets, pad_id)

"""POST /tokenize and /detokenize on the wire, in vLLM's shapes.

    {"prompt": "Hello"}                                  -> {"count", "max_model_len", "tokens", "token_strs"}
    {"messages": [...], "add_generation_prompt": true}   -> the chat prompt's ids (template and tools applied)
    {"tokens": [9906, 0]}  (detokenize)                  -> {"prompt": "Hello!"}
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol.chat import ChatMessage, Tool


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = True  # prompt only: the tokenizer's prefix (BOS, [gMASK]<sop>) first
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of `prompt` and `messages`")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)
    skip_special_tokens: bool = False


class DetokenizeResponse(BaseModel):
    prompt: str

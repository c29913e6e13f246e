"""Chat completions on the wire: the request (with to_sampling_params) and the chat.completion /
chat.completion.chunk objects."""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from model import SamplingParams, SamplingParamsError
from server.protocol.common import PromptLogprob, SamplingFields, Timings, Usage


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # an earlier assistant turn's reasoning, sent back for templates that re-render it (GLM-4.5+, Qwen3)
    reasoning_content: str | None = None

    def text(self) -> str | None:
        """Content as one string; only text parts exist for a text model."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise SamplingParamsError("messages", f"content part type {part.type!r} is not supported "
                                          "by this text-only model")
        return "".join(part.text or "" for part in self.content)

    def to_template(self) -> dict[str, Any]:
        """The dict a jinja chat template expects; `developer` is the newer name of `system`."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if out["content"] is None:
            out["content"] = ""
        for key in ("name", "tool_calls", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class FunctionDef(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens; both work
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # structured output: see server/serving/openai/chat.py `structured_output_processors`
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # vLLM extras for the template
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None  # {"enable_thinking": false} turns reasoning off
    # reasoning models: at most this many tokens inside <think> ... </think>, then the block is closed
    thinking_token_budget: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs is not supported with stream=true on chat completions")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def to_sampling_params(self, max_tokens: int, **extra: Any) -> SamplingParams:
        """`extra` carries what the server adds (logits processors for structured output)."""
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.build_sampling_params(max_tokens, logprobs, **extra)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None
    refusal: list[TokenLogprobOut] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # the text inside <think> ... </think> (--reasoning-parser): vLLM's older and newer names, same text
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM extra: the stop string or token id that matched


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM's field, when asked for
    timings: Timings | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]  # role / content / reasoning_content + reasoning / refusal / tool_calls, those present
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None
    service_tier: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None

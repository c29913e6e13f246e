"""Legacy completions on the wire: the request (with to_sampling_params) and text_completion."""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, WithJsonSchema, model_validator

from model import SamplingParams
from server.protocol.common import PromptLogprob, SamplingFields, Timings, Usage


def _prompt_kind(value: Any) -> str:
    """Which form a prompt has, from its first item. pydantic's smart union tried every form and, for
    a list of 131k token ids, built 131k errors for list[str] first: ~70 ms on the event loop."""
    if not isinstance(value, list):
        return "text"  # a string, or the error says what most prompts are
    first = value[0] if value else None
    return "texts" if isinstance(first, str) else "id_lists" if isinstance(first, list) else "ids"


_IDS = {"type": "array", "items": {"type": "integer"}}
Prompt = Annotated[Union[Annotated[str, Tag("text")], Annotated[list[str], Tag("texts")],
                         Annotated[list[int], Tag("ids")], Annotated[list[list[int]], Tag("id_lists")]],
                   Discriminator(_prompt_kind),
                   # the schema clients see stays anyOf ([] is several forms at once, which oneOf forbids)
                   WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                             _IDS, {"type": "array", "items": _IDS}], "title": "Prompt"})]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = 16  # OpenAI's default for this endpoint; null = up to the context
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    # vLLM's field: a text prompt starts with the tokenizer's own prefix (BOS, GLM's [gMASK]<sop>) unless false
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of different from n is not supported")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this model")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_tokens"

    @property
    def echo_logprobs(self) -> bool:
        """OpenAI's way to score a prompt: echo it with logprobs (lm-eval-harness's loglikelihood)."""
        return self.echo and self.logprobs is not None

    @property
    def prompt_score_alternatives(self) -> int | None:
        """Alternatives per prompt token the engine must score (None: the prompt is not scored): enough
        for vLLM's prompt_logprobs and for echo's `logprobs`."""
        if not self.echo_logprobs:
            return self.prompt_logprobs
        return max(self.prompt_logprobs or 0, self.logprobs or 0)

    def to_sampling_params(self, max_tokens: int, **extra: Any) -> SamplingParams:
        kwargs = self.sampling_kwargs(max_tokens, self.logprobs)
        kwargs["prompt_logprobs"] = self.prompt_score_alternatives
        return SamplingParams(**kwargs, **extra)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM's field, when asked for


class Completion(BaseModel):
    """Both the whole response and each streamed chunk (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None

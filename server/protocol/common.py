"""Wire pieces shared by chat and completions: sampling fields, usage, timings, models, errors."""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model import SamplingParams, SamplingParamsError


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The OpenAI sampling fields plus the extras vLLM accepts; unknown fields are ignored, as the
    OpenAI SDKs send new ones before servers learn them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    prompt_logprobs: int | None = None  # score the prompt: its tokens' logprobs plus this many alternatives
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0  # lower is scheduled first (vLLM's field); see docs/API.md

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_kwargs(self, max_tokens: int, logprobs: int | None) -> dict[str, Any]:
        """Keyword arguments for SamplingParams; range checks happen there (SamplingParamsError)."""
        bias = None
        if self.logit_bias:
            try:
                bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except ValueError as e:
                raise SamplingParamsError("logit_bias", "logit_bias keys must be token ids") from e
        kwargs: dict[str, Any] = dict(
            n=self.n, presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=self.seed, stop=self.stop or (), stop_token_ids=tuple(self.stop_token_ids or ()),  # SamplingParams normalises stop
            include_stop_str_in_output=self.include_stop_str_in_output, max_tokens=max_tokens,
            min_tokens=self.min_tokens, ignore_eos=self.ignore_eos, logprobs=logprobs, logit_bias=bias,
            skip_special_tokens=self.skip_special_tokens, prompt_logprobs=self.prompt_logprobs,
            priority=self.priority)
        optional = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                        repetition_penalty=self.repetition_penalty)
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        return kwargs

    def build_sampling_params(self, max_tokens: int, logprobs: int | None, **extra: Any) -> SamplingParams:
        return SamplingParams(**self.sampling_kwargs(max_tokens, logprobs), **extra)


class PromptLogprob(BaseModel):
    """One entry of vLLM's `prompt_logprobs`: per prompt token, token id -> this."""

    logprob: float
    rank: int | None = None
    decoded_token: str


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


class Timings(BaseModel):
    """glmserve's per-request latency breakdown (milliseconds), on responses and final chunks."""

    queue_ms: float
    prefill_ms: float
    decode_ms: float
    ttft_ms: float
    cached_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "glmserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    quantization: str | None = None  # the served weights: none, int8, int4 (group 32), ...
    weight_bytes: int | None = None  # resident bytes of the weights
    # training_args.json of a checkpoint glmserve trained (task, base, data hash, steps, eval loss)
    provenance: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo

"""What the engine hands back: per-request deltas, errors, and engine-wide statistics."""
from __future__ import annotations

from dataclasses import dataclass, field


class RequestRejected(ValueError):
    """A request the engine can never serve (too long for the context or the KV cache)."""

    def __init__(self, message: str, code: str = "context_length_exceeded", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class EngineDeadError(RuntimeError):
    """The engine loop died; no request can make progress."""


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top_logprobs: list[tuple[int, str, float]] = field(default_factory=list)  # (token_id, token, logprob)
    bytes: list[int] = field(default_factory=list)  # raw bytes of the token
    top_bytes: list[list[int]] = field(default_factory=list)  # raw bytes of each top_logprobs entry
    rank: int | None = None  # 1 = the most likely token (reported for prompt tokens)


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    prefill_done_time: float | None = None


@dataclass
class RequestOutput:
    """One step's news for one choice (`index`) of one request."""

    request_id: str
    index: int
    token_ids: list[int]  # new tokens since the last output
    text_delta: str  # new complete text (never half a character; stop strings left out)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error"
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    stop_reason: str | int | None = None  # the matched stop string or stop token id
    logprobs: list[TokenLogprob] | None = None
    # with SamplingParams.prompt_logprobs, on a choice's first output: one entry per prompt token (None first)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    metrics: RequestMetrics | None = None
    error: str | None = None
    embedding: list[float] | None = None  # a pooling request's unit vector, on its one (finished) output


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    block_size: int
    kv_cache_usage: float  # 0..1, blocks in use by live sequences
    prefix_cache_queries: int  # prompt tokens looked up
    prefix_cache_hits: int  # prompt tokens found cached
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    generation_throughput: float  # tokens/s over the last few seconds
    max_model_len: int
    steps_total: int = 0
    spec_draft_tokens_total: int = 0  # speculative tokens proposed
    spec_accepted_tokens_total: int = 0  # of those, kept after verification

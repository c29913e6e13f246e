"""SamplingParams: how one request is decoded. Validated when built; an invalid value raises
SamplingParamsError naming the field (the server turns it into a 400 with `param` set)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# A logits processor sees the sequence's output token ids so far and its (vocab,) fp32 logits row and
# returns the row to sample from (structured output plugs in here).
LogitsProcessor = Callable[[list[int], Any], Any]

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_N = 16


class SamplingParamsError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    max_tokens: int = 16  # 0 with prompt_logprobs: score the prompt, generate nothing
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # None = off; k >= 0 = the chosen token's logprob plus top k
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (vLLM's field)
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    # an embedding request (model/engine/pooling.py): "mean" or "last"; needs max_tokens 0 and n 1
    pooling: str | None = None
    logits_processors: tuple[LogitsProcessor, ...] = field(default=(), compare=False, hash=False)
    # scheduling, not decoding: a lower priority is admitted first and preempted last (vLLM's convention);
    # sequences with different fairness keys (API keys, client addresses) share the sequence slots
    priority: int = 0
    fairness_key: str | None = None
    # which loaded LoRA adapter decodes this request (model/lora); None = the bare base model
    lora_name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "logits_processors", tuple(self.logits_processors))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        self._validate()

    def _validate(self) -> None:
        _check("n", 1 <= self.n <= MAX_N, f"n must be between 1 and {MAX_N}, got {self.n}")
        _check("temperature", 0.0 <= self.temperature <= 2.0, f"temperature must be in [0, 2], got {self.temperature}")
        _check("top_p", 0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        # the upper bound keeps top_k inside the sampler's int64 tensor: 2**63 killed the engine loop
        _check("top_k", 0 <= self.top_k < 2 ** 63, f"top_k must be -1, 0 (off) or a positive 64-bit integer, "
               f"got {self.top_k}")
        _check("min_p", 0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0,
               f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        _check("presence_penalty", -2.0 <= self.presence_penalty <= 2.0,
               f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        _check("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0,
               f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        scoring_only = self.max_tokens == 0 and (self.prompt_logprobs is not None or self.pooling is not None)
        if self.pooling is not None:
            _check("pooling", self.pooling in ("mean", "last"), f"pooling must be mean or last, got {self.pooling!r}")
            _check("pooling", self.max_tokens == 0 and self.n == 1, "a pooling request needs max_tokens 0 and n 1")
        _check("max_tokens", self.max_tokens >= 1 or scoring_only,
               f"max_tokens must be at least 1 (0 only to score a prompt with prompt_logprobs), got {self.max_tokens}")
        _check("min_tokens", 0 <= self.min_tokens <= self.max_tokens,
               f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        _check("stop", len(self.stop) <= MAX_STOP_STRINGS, f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        _check("stop", all(isinstance(s, str) and 0 < len(s) <= 256 for s in self.stop),
               "each stop string must be a non-empty string of at most 256 characters")
        _check("stop_token_ids", all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be non-negative")
        if self.logprobs is not None:
            _check("top_logprobs", 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                   f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if self.prompt_logprobs is not None:
            _check("prompt_logprobs", 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS,
                   f"prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.prompt_logprobs}")
        _check("priority", -(2 ** 31) <= self.priority < 2 ** 31, f"priority must fit in 32 bits, got {self.priority}")
        if self.seed is not None:
            _check("seed", -(2 ** 63) <= self.seed < 2 ** 64, "seed must fit in 64 bits")
        for token_id, bias in (self.logit_bias or {}).items():
            _check("logit_bias", int(token_id) >= 0 and -100.0 <= float(bias) <= 100.0,
                   f"logit_bias values must be in [-100, 100] for non-negative token ids, got {token_id}: {bias}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids named by the request must exist in the model's vocabulary."""
        for token_id in (self.logit_bias or {}):
            _check("logit_bias", int(token_id) < vocab_size, f"logit_bias token id {token_id} >= vocab size {vocab_size}")
        for token_id in self.stop_token_ids:
            _check("stop_token_ids", token_id < vocab_size, f"stop token id {token_id} >= vocab size {vocab_size}")


def _check(param: str, ok: bool, message: str) -> None:
    if not ok:
        raise SamplingParamsError(param, message)

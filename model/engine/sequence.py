"""One sequence's state in the engine (no torch): its tokens, how many have K/V in the cache, its
block table and status. A request with n > 1 is n sequences sharing a request_id."""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from model.sampling_params import SamplingParams

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    index: int = 0  # choice index within the request
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    num_computed_tokens: int = 0  # tokens whose K/V is in the cache
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of the full blocks registered so far
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    arrival_time: float = field(default_factory=time.time)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    prefill_done_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0
    admitted_once: bool = False
    # per prompt position: None for the first token, then TokenLogprob (only with params.prompt_logprobs)
    prompt_logprobs: list | None = None
    draft_token_ids: list[int] = field(default_factory=list)  # speculative tokens to verify this step
    embedding: list[float] | None = None  # a pooling request's vector, once its prompt is computed
    lora_id: int = 0  # the LoRA adapter's load id (model/lora), 0 = the bare base; part of the block hashes

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if self.params.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = [None]  # nothing scores the first token

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Prompt logprobs were asked for and some prompt position has none yet."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    @property
    def needs_all_positions(self) -> bool:
        """Every prompt position must be computed here (prompt logprobs, mean pooling): no prefix cache."""
        return self.needs_prompt_logprobs or self.params.pooling == "mean"

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: the KV is dropped; prompt + output so far are computed again."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.block_hashes = []
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1

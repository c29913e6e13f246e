"""RequestTrace: one HTTP request's bookkeeping across its engine requests and choices.

It turns RequestOutputs into usage, the `timings` object, Prometheus observations and the fields of
the request's log line, so chat, completions and the task endpoints account for requests the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from model import RequestOutput
from server.metrics import ServerMetrics
from server.protocol import Timings, Usage


@dataclass
class ChoiceTrace:
    num_output_tokens: int = 0
    finish_reason: str | None = None
    first_time: float | None = None
    last_time: float | None = None


@dataclass
class PromptTrace:
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    arrival_time: float | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None


@dataclass
class RequestTrace:
    metrics: ServerMetrics
    log: dict[str, Any]  # the request's log-line fields (request.state.glm_log)
    start: float = field(default_factory=time.time)
    prompts: dict[str, PromptTrace] = field(default_factory=dict)
    choices: dict[tuple[str, int], ChoiceTrace] = field(default_factory=dict)
    end: float | None = None

    def on_output(self, out: RequestOutput) -> None:
        now = time.time()
        prompt = self.prompts.setdefault(out.request_id, PromptTrace())
        prompt.num_prompt_tokens = out.num_prompt_tokens
        prompt.num_cached_tokens = out.num_cached_tokens
        m = out.metrics
        if m is not None and prompt.arrival_time is None:
            prompt.arrival_time, prompt.first_scheduled_time = m.arrival_time, m.first_scheduled_time
            prompt.first_token_time = m.first_token_time
        choice = self.choices.setdefault((out.request_id, out.index), ChoiceTrace())
        if choice.last_time is not None and out.token_ids:
            self.metrics.observe_itl(now - choice.last_time, len(out.token_ids))
        if choice.first_time is None:
            choice.first_time = now
        choice.last_time = now
        choice.num_output_tokens = out.num_output_tokens
        if out.finished:
            self._finish_choice(choice, out.finish_reason or "stop", prompt, now)

    def _finish_choice(self, choice: ChoiceTrace, reason: str, prompt: PromptTrace, now: float) -> None:
        choice.finish_reason = reason
        ttft = (choice.first_time - self.start) if choice.first_time else None
        queue = None
        if prompt.first_scheduled_time and prompt.arrival_time:
            queue = max(0.0, prompt.first_scheduled_time - prompt.arrival_time)
        self.metrics.observe_finished(reason, ttft, queue, now - self.start, prompt.num_prompt_tokens,
                                      choice.num_output_tokens)

    def close(self, status_reason: str = "abort") -> None:
        """At the end of the request: choices that never finished (client left, error) count as aborted."""
        if self.end is not None:
            return
        self.end = time.time()
        for (request_id, _), choice in self.choices.items():
            if choice.finish_reason is None:
                self._finish_choice(choice, status_reason, self.prompts.get(request_id, PromptTrace()), self.end)
        self.log.update(self.log_fields())

    # ---- what responses carry --------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return sum(p.num_prompt_tokens for p in self.prompts.values())

    @property
    def num_cached_tokens(self) -> int:
        return sum(p.num_cached_tokens for p in self.prompts.values())

    @property
    def num_output_tokens(self) -> int:
        return sum(c.num_output_tokens for c in self.choices.values())

    def usage(self) -> Usage:
        return Usage.of(self.num_prompt_tokens, self.num_output_tokens, self.num_cached_tokens)

    def timings(self) -> Timings:
        """Milliseconds: queue (arrival -> first scheduled), prefill (scheduled -> first token), decode
        (first token -> last token), ttft (request received -> first output), over all prompts."""
        prompts = [p for p in self.prompts.values() if p.arrival_time is not None]
        arrival = min((p.arrival_time for p in prompts), default=self.start)
        scheduled = min((p.first_scheduled_time for p in prompts if p.first_scheduled_time), default=arrival)
        first_token = min((p.first_token_time for p in prompts if p.first_token_time), default=scheduled)
        first_out = min((c.first_time for c in self.choices.values() if c.first_time), default=None)
        last_out = max((c.last_time for c in self.choices.values() if c.last_time), default=None)
        return Timings(
            queue_ms=_ms(scheduled - arrival), prefill_ms=_ms(first_token - scheduled),
            decode_ms=_ms((last_out - first_out) if first_out and last_out else 0.0),
            ttft_ms=_ms((first_out - self.start) if first_out else 0.0), cached_tokens=self.num_cached_tokens)

    def log_fields(self) -> dict[str, Any]:
        t = self.timings()
        reasons = sorted({c.finish_reason for c in self.choices.values() if c.finish_reason})
        return {"prompt_tokens": self.num_prompt_tokens, "output_tokens": self.num_output_tokens,
                "cached_tokens": self.num_cached_tokens, "queue_ms": t.queue_ms, "ttft_ms": t.ttft_ms,
                "finish_reason": ",".join(reasons) or None}


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)

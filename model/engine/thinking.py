"""Logits processors for reasoning models: a thinking budget, and a grammar that waits for `</think>`.

    span = ThinkSpan(start_ids, end_ids, starts_inside, skip_ids)      # token ids of <think> / </think>
    budget = ThinkingBudgetProcessor(span, budget=256)                 # forces </think> when spent
    gated = ReasoningGate(span, grammar_processor)                     # grammar only after </think>
    params = SamplingParams(..., logits_processors=(gated, budget))

Both are pure functions of the sequence's output token ids (as model/engine/guided.py is), so the n
choices of a request, preemption and recomputation need no extra state. The markers are found by token
id: `<think>` / `</think>` are single added tokens in GLM-4.5+, Qwen3 and DeepSeek-R1 vocabularies, and a
multi-token marker works as long as the model writes it in its canonical tokenization.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class ThinkSpan:
    """Where reasoning sits in a sequence's output. `starts_inside`: the prompt opened the block.
    `skip_ids`: whitespace tokens the model may write before its `<think>`."""

    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    starts_inside: bool = False
    skip_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.start_ids or not self.end_ids:
            raise ValueError("the think markers must encode to at least one token")

    def locate(self, output_ids: list[int]) -> tuple[str, int]:
        """("undecided" | "none" | "open" | "closed", index): for open, where reasoning begins; for
        closed, the index just after the end marker."""
        begin = 0
        if not self.starts_inside:
            while begin < len(output_ids) and output_ids[begin] in self.skip_ids:
                begin += 1
            head = output_ids[begin:begin + len(self.start_ids)]
            if list(self.start_ids[:len(head)]) != head:
                return "none", 0
            if len(head) < len(self.start_ids):
                return "undecided", begin
            begin += len(self.start_ids)
        end = _find(output_ids, self.end_ids, begin)
        return ("open", begin) if end == -1 else ("closed", end + len(self.end_ids))

    def partial_end(self, output_ids: list[int]) -> int:
        """How many leading tokens of the end marker the output already ends with."""
        for n in range(min(len(self.end_ids) - 1, len(output_ids)), 0, -1):
            if list(self.end_ids[:n]) == output_ids[-n:]:
                return n
        return 0


def _find(haystack: list[int], needle: tuple[int, ...], start: int) -> int:
    """First index >= start where `needle` occurs; list.index scans in C, as this runs every step."""
    n, first = len(needle), needle[0]
    i = start
    while True:
        try:
            i = haystack.index(first, i)
        except ValueError:
            return -1
        if tuple(haystack[i:i + n]) == needle:
            return i
        i += 1


class ThinkingBudgetProcessor:
    """Once `budget` reasoning tokens are out and the block is still open, only the end marker's next
    token stays possible, so the model closes its reasoning and answers. `mid_character(ids)` (optional)
    says the output ends inside a UTF-8 character: up to MAX_GRACE_TOKENS more are allowed to finish it,
    so the reasoning does not end in half a character."""

    MAX_GRACE_TOKENS = 3  # a UTF-8 character is at most 4 bytes

    def __init__(self, span: ThinkSpan, budget: int, mid_character: Callable[[list[int]], bool] | None = None) -> None:
        self.span = span
        self.budget = budget
        self.mid_character = mid_character

    def __call__(self, output_token_ids: list[int], logits_row: torch.Tensor) -> torch.Tensor:
        state, begin = self.span.locate(output_token_ids)
        if state != "open":
            return logits_row
        done = self.span.partial_end(output_token_ids)
        over = len(output_token_ids) - begin - done - self.budget
        if over < 0:
            return logits_row
        if (not done and over < self.MAX_GRACE_TOKENS and self.mid_character is not None
                and len(output_token_ids) > begin and self.mid_character(output_token_ids[begin:])):
            return logits_row
        forced = self.span.end_ids[done]
        keep = logits_row[forced].clone() if torch.isfinite(logits_row[forced]) else logits_row.new_tensor(0.0)
        logits_row.fill_(float("-inf"))
        logits_row[forced] = keep
        return logits_row


class ReasoningGate:
    """Applies `inner` (a grammar) to the text after `</think>` only: reasoning stays free. Before the
    model has shown whether it reasons, the grammar's tokens and the opening marker are both allowed."""

    def __init__(self, span: ThinkSpan, inner: Any) -> None:
        self.span = span
        self.inner = inner

    def __call__(self, output_token_ids: list[int], logits_row: torch.Tensor) -> torch.Tensor:
        state, index = self.span.locate(output_token_ids)
        if state == "open":
            return logits_row
        if state == "closed":
            return self.inner(output_token_ids[index:], logits_row)
        if state == "none":
            return self.inner(output_token_ids, logits_row)
        # undecided: the grammar from the start, or the next token of `<think>`
        opener = self.span.start_ids[len(output_token_ids) - index]
        saved = logits_row[opener].clone()
        logits_row = self.inner(output_token_ids, logits_row)
        logits_row[opener] = saved
        return logits_row

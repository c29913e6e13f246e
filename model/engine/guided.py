"""The grammar mask for one request: a SamplingParams logits processor built by model/structured.py.

The sampler calls it per sequence and step as `processor(output_token_ids, logits_row)`. It keeps no
hidden notion of "the next token": each call it finds the matcher whose accepted tokens are the longest
prefix of `output_token_ids` and advances it over the rest. So a preempted and recomputed sequence (same
outputs), the n choices of one request (one processor, diverging outputs) and a first call with tokens
already present all resynchronize from the token list alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class _Tracked:
    matcher: Any  # xgrammar.GrammarMatcher
    token_ids: list[int] = field(default_factory=list)  # the tokens it has accepted, in order


class GrammarLogitsProcessor:
    """Masks every token the grammar does not allow next; after the grammar completes only the stop
    tokens remain. A token the grammar rejects (possible only when other processing left no allowed
    token finite) disables masking for that sequence: the server then validates and reports text."""

    def __init__(self, compiled: Any, stop_token_ids: tuple[int, ...], vocab_size: int, num_choices: int = 1,
                 allowed: torch.Tensor | None = None) -> None:
        """`allowed`: a token bitmask ANDed into every mask (tokens no grammar here may produce)."""
        import xgrammar as xgr

        self._xgr = xgr
        self._compiled = compiled
        self._stop_token_ids = list(stop_token_ids)
        self._vocab_size = vocab_size
        # one matcher per live choice plus one spare, so a choice that diverges from a sibling forks
        # from the shared state instead of replaying its tokens from the start
        self._capacity = num_choices + 1
        self._pool: list[_Tracked] = []  # least recently used first
        self._dead: list[list[int]] = []  # prefixes the grammar rejected
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # (1, ceil(V / 32)) int32
        self._allowed = allowed

    def __call__(self, output_token_ids: list[int], logits_row: torch.Tensor) -> torch.Tensor:
        tracked = self._matcher_for(output_token_ids)
        if tracked is None:
            return logits_row
        tracked.matcher.fill_next_token_bitmask(self._bitmask)
        if self._allowed is not None:
            self._bitmask &= self._allowed
        bitmask = self._bitmask if logits_row.device.type == "cpu" else self._bitmask.to(logits_row.device)
        width = min(self._vocab_size, logits_row.shape[-1])
        self._xgr.apply_token_bitmask_inplace(logits_row.unsqueeze(0), bitmask, vocab_size=width)
        if logits_row.shape[-1] > width:  # ids beyond the grammar's vocabulary are never valid output
            logits_row[width:] = float("-inf")
        return logits_row

    def is_dead(self, token_ids: list[int]) -> bool:
        return any(token_ids[: len(d)] == d for d in self._dead)

    def _matcher_for(self, token_ids: list[int]) -> _Tracked | None:
        if self._dead and self.is_dead(token_ids):
            return None
        best = self._longest_prefix(token_ids)
        if best is None:
            best = _Tracked(self._new_matcher())
            self._remember(best)
        elif len(best.token_ids) < len(token_ids) and len(self._pool) < self._capacity:
            # keep `best` at its state for a sibling choice still there; advance a copy
            best = _Tracked(best.matcher.fork(), list(best.token_ids))
            self._remember(best)
        self._pool.remove(best)
        self._pool.append(best)
        return best if self._advance(best, token_ids) else None

    def _longest_prefix(self, token_ids: list[int]) -> _Tracked | None:
        best: _Tracked | None = None
        n = len(token_ids)
        for tracked in self._pool:
            k = len(tracked.token_ids)
            if k <= n and (best is None or k > len(best.token_ids)) and token_ids[:k] == tracked.token_ids:
                best = tracked
        return best

    def _advance(self, tracked: _Tracked, token_ids: list[int]) -> bool:
        for token_id in token_ids[len(tracked.token_ids):]:
            if not tracked.matcher.accept_token(token_id):
                prefix = tracked.token_ids + [token_id]
                log.warning("grammar rejected token %d after %d tokens; masking stops for this sequence",
                            token_id, len(tracked.token_ids))
                self._dead.append(prefix)
                self._pool.remove(tracked)
                return False
            tracked.token_ids.append(token_id)
        return True

    def _remember(self, tracked: _Tracked) -> None:
        self._pool.append(tracked)
        if len(self._pool) > self._capacity:
            self._pool.pop(0)

    def _new_matcher(self) -> Any:
        return self._xgr.GrammarMatcher(self._compiled, override_stop_tokens=self._stop_token_ids)

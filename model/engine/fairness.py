"""Who gets the next sequence slot (no torch): priority first, then a fair share per key.

A sequence's key is `SamplingParams.fairness_key` (the server sets a digest of the API key, or the
client address); its priority is `SamplingParams.priority` (lower first, vLLM's convention).

- Order: waiting sequences are taken by (priority, arrival): a preempted sequence or a deferred n > 1
  choice arrived earlier than anything queued after it, so it goes first, as before.
- Share: with K keys among the running and waiting sequences, each key's share is
  ceil(max_num_seqs / K) slots. Within the best waiting priority, a sequence of a key below its share
  is admitted before one of a key at or above it; when only keys at their share wait, they get the
  free slots (no slot idles).
- Preemption: when every slot is taken and a sequence waits whose priority is better than a running
  one's, or whose key is below its share while another key is above it, the policy names one running
  sequence to preempt (the worst priority, then the newest, of the key most above its share).

With one key and one priority (offline use, or no keys) this is exactly first-come, first-served.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from model.engine.sequence import Sequence


def key_of(seq: Sequence) -> str:
    return seq.params.fairness_key or ""


def order(seq: Sequence) -> tuple[int, float, int]:
    """Sort key of the waiting queue and of the running list (running[-1] is the first to preempt)."""
    return seq.params.priority, seq.arrival_time, seq.seq_id


class SlotPolicy:
    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs

    def share(self, running: Iterable[Sequence], waiting: Iterable[Sequence]) -> int:
        keys = {key_of(s) for s in running} | {key_of(s) for s in waiting}
        return -(-self.max_num_seqs // max(1, len(keys)))  # ceil

    def next_waiting(self, waiting: Iterable[Sequence], running: list[Sequence]) -> Sequence:
        """The waiting sequence to admit next (waiting must not be empty)."""
        candidates = sorted(waiting, key=order)
        share = self.share(running, candidates)
        held = Counter(key_of(s) for s in running)
        for seq in candidates:
            if seq.params.priority != candidates[0].params.priority:
                break  # fairness decides within a priority level, never across levels
            if held[key_of(seq)] < share:
                return seq
        return candidates[0]

    def victim(self, waiting: Iterable[Sequence], running: list[Sequence]) -> Sequence | None:
        """A running sequence to preempt so that a waiting one can run, or None. Only asked when every
        slot is taken."""
        waiting = list(waiting)
        if not waiting or not running:
            return None
        worst = max(running, key=order)
        if min(s.params.priority for s in waiting) < worst.params.priority:
            return worst
        best = self.next_waiting(waiting, running)
        share = self.share(running, waiting)
        held = Counter(key_of(s) for s in running)
        if held[key_of(best)] >= share:
            return None
        over = [k for k, n in held.items() if n > share]
        if not over:
            return None
        most = max(over, key=lambda k: held[k])
        candidates = [s for s in running if key_of(s) == most and s.params.priority >= best.params.priority]
        return max(candidates, key=order) if candidates else None

"""Chooses what each step computes (no torch).

Every sequence has `num_uncomputed_tokens`: the prompt (or prompt + output after a preemption) while
prefilling, exactly 1 while decoding. A step gives each running sequence up to that many tokens within
the token budget (`max_num_batched_tokens`): running sequences first (decodes cost one token, so they
are never starved by a long prompt), then waiting ones in arrival order while blocks and
`max_num_seqs` allow. A long prompt is split across steps (chunked prefill); while prompts wait that
could start now (a free slot, blocks for them), running prefills leave them up to half the budget
(`interleave_prefills`), so a chat's short prompt no longer waits a whole step behind a task's
512-token chunk. When the pool cannot give a
running sequence its next block, the last sequence of the running list is preempted (its blocks freed,
recomputed later).

Which waiting sequence goes next, and which running one gives its slot up when a better-priority or
under-share one waits, is model/engine/fairness.py's SlotPolicy: priority, then a fair share of the
slots per fairness key (API key or client address), then arrival. The running list is kept in that
order, so its last sequence is the worst priority, newest one.
"""
from __future__ import annotations

import bisect
import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from model.engine.block_manager import BlockManager
from model.engine.fairness import SlotPolicy, order
from model.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed for it this step, its speculative draft included
    num_draft: int = 0  # the last num_draft of them are seq.draft_token_ids, to be verified

    @property
    def samples(self) -> bool:
        """After this step every token is computed, so the step's last logits give the next token."""
        return self.seq.num_computed_tokens + self.num_tokens - self.num_draft == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 interleave_prefills: bool = True) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.interleave_prefills = interleave_prefills
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by fairness.order
        self.policy = SlotPolicy(max_num_seqs)
        self.num_preemptions = 0
        # LoRA (model/lora): may this sequence join the running ones without exceeding --max-loras adapters
        self.admission_gate: Callable[[Sequence, list[Sequence]], bool] | None = None

    def add(self, seq: Sequence, front: bool = False) -> None:
        seq.status = SequenceStatus.WAITING
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        self._free_slot_for_waiting(out)
        budget = self._schedule_running(out, budget)
        self._schedule_waiting(out, budget)
        return out

    def _free_slot_for_waiting(self, out: SchedulerOutput) -> None:
        """Every slot taken and a sequence waits that deserves one more than a running one (better
        priority, or its key below its share while another is above): preempt that running one."""
        if len(self.running) < self.max_num_seqs or not self.waiting:
            return
        victim = self.policy.victim(self.waiting, self.running)
        if victim is not None:
            self._preempt(victim)
            out.num_preempted += 1

    def _reserve_for_waiting(self) -> int:
        """Tokens running prefills leave this step to the waiting prompts that can start now: the
        prompts of the next ones in line, as many as free slots and free blocks allow, at most half
        the budget (so a running prefill always advances)."""
        free_slots = self.max_num_seqs - len(self.running)
        if not self.interleave_prefills or free_slots < 1 or not self.waiting:
            return 0
        bm = self.block_manager
        free_blocks, reserve = bm.num_free_blocks, 0
        for seq in heapq.nsmallest(free_slots, self.waiting, key=order):
            free_blocks -= bm.blocks_needed(seq.num_tokens)
            if free_blocks < 0:
                break  # it could not start this step: reserving for it would only idle the budget
            reserve += seq.num_uncomputed_tokens
        return min(reserve, self.max_num_batched_tokens // 2)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        bm = self.block_manager
        reserve = self._reserve_for_waiting()
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            draft = self._fit_draft(seq, budget)
            if draft or seq.num_uncomputed_tokens == 1:  # a decode is never held back
                num = 1 + draft
            else:
                num = min(seq.num_uncomputed_tokens, budget - reserve)
                if num < 1:
                    i += 1  # this prefill resumes next step; the waiting prompts take the rest now
                    continue
            while not bm.can_grow(seq, num):
                victim = self.running[-1]
                self._preempt(victim)
                out.num_preempted += 1
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break  # seq itself was preempted: nothing after it is left either
            bm.grow(seq, num)
            out.scheduled.append(ScheduledSeq(seq, num, draft))
            budget -= num
            i += 1
        return budget

    def _fit_draft(self, seq: Sequence, budget: int) -> int:
        """How many of seq's draft tokens ride along this step: all of them when it is decoding and they
        fit the token budget and the free blocks (a draft never preempts anyone), else none."""
        num = len(seq.draft_token_ids)
        if num and (seq.num_uncomputed_tokens != 1 or budget < 1 + num
                    or not self.block_manager.can_grow(seq, 1 + num)):
            seq.draft_token_ids = []
            return 0
        return num

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.policy.next_waiting(self.waiting, self.running)
            if self.admission_gate is not None and not self.admission_gate(seq, self.running):
                break  # it waits until a running adapter's sequences finish (at most max_loras per step)
            if not bm.allocate(seq):
                break
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.time()
            bisect.insort(self.running, seq, key=order)
            num = min(seq.num_uncomputed_tokens, budget)
            out.scheduled.append(ScheduledSeq(seq, num))
            budget -= num

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free_sequence(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """Removes seq from whichever queue holds it and frees its blocks."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = seq.finish_reason or reason
        seq.finished_time = time.time()

    def after_step(self, out: SchedulerOutput) -> None:
        """Advances computed counts and registers newly full blocks in the prefix cache."""
        for item in out.scheduled:
            seq = item.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            # draft positions count once verified (LLMEngine._accept_drafts)
            seq.num_computed_tokens += item.num_tokens - item.num_draft
            self.block_manager.register_full_blocks(seq)

"""Postprocessor: everything a step does after the forward pass, in one owner.

    outputs = postprocessor.process(scheduler_output, step_output)

It has the scheduler advance each scheduled sequence's computed count (Scheduler.after_step, torch-free
bookkeeping), records prompt scores, samples the plain rows, verifies drafted rows, appends tokens through the finish, stop-string
and text checks (OutputProcessor), admits the other choices of an `n > 1` request once its first
choice has its prompt cached, and finishes sequences. One request's failure fails that request only.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from model.engine.block_manager import BlockManager
from model.engine.model_runner import StepOutput
from model.engine.output_processor import OutputProcessor
from model.engine.outputs import RequestOutput
from model.engine.sampler import Sampler
from model.engine.scheduler import Scheduler, SchedulerOutput
from model.engine.sequence import Sequence

log = logging.getLogger("glmserve.engine")


class Postprocessor:
    def __init__(self, scheduler: Scheduler, block_manager: BlockManager, sampler: Sampler,
                 outputs: OutputProcessor) -> None:
        self.scheduler = scheduler
        self.block_manager = block_manager
        self.sampler = sampler
        self.outputs = outputs
        self.requests: dict[str, list[Sequence]] = {}  # request_id -> its live sequences
        self.deferred_children: dict[str, list[Sequence]] = {}  # n > 1: admitted once the prompt is cached
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_steps = 0
        self.num_draft_tokens = 0  # speculative tokens proposed, and kept after verification
        self.num_accepted_draft_tokens = 0

    # ---- requests ----------------------------------------------------------------------------------
    def add(self, seqs: list[Sequence]) -> None:
        """Queues the first choice; the others wait until its prompt is in the prefix cache."""
        self.requests[seqs[0].request_id] = seqs
        self.scheduler.add(seqs[0])
        if len(seqs) > 1:
            self.deferred_children[seqs[0].request_id] = seqs[1:]

    def abort(self, request_id: str) -> list[RequestOutput]:
        outs = []
        self.deferred_children.pop(request_id, None)
        for seq in self.requests.pop(request_id, []):
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
                outs.append(self.outputs.build(seq, [], "", True, None))
            self._release(seq)
        return outs

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self.deferred_children)

    # ---- the step's second half --------------------------------------------------------------------
    def process(self, sched: SchedulerOutput, step: StepOutput) -> list[RequestOutput]:
        self.num_steps += 1
        self.num_prompt_tokens_total += sum(s.num_tokens for s in sched.scheduled if s.seq.num_output_tokens == 0)
        self.scheduler.after_step(sched)  # computed counts advance, full blocks enter the prefix cache
        for scores in step.prompt_scores:
            self.outputs.record_prompt_scores(scores)
        plain_rows, plain_seqs, drafted = [], [], []
        row = 0
        for item in step.sampling:  # a drafted sequence brings 1 + num_draft rows, the others one
            if item.num_draft:
                drafted.append((item.seq, step.logits[row:row + 1 + item.num_draft]))
            else:
                plain_rows.append(row)
                plain_seqs.append(item.seq)
            row += 1 + item.num_draft
        logits = step.logits if not drafted else step.logits[plain_rows]
        outputs = self._sample(logits, plain_seqs)
        for seq, rows in drafted:
            outputs += self._isolated(seq, self._accept_drafts, seq, rows)
        self.num_generation_tokens_total += sum(len(out.token_ids) for out in outputs)
        return outputs

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[RequestOutput]:
        if not seqs:
            return []
        tokens, raw_logprobs, failed = self.sampler(logits, seqs)
        now = time.time()
        outputs: list[RequestOutput] = []
        for i, (seq, token_id) in enumerate(zip(seqs, tokens)):
            row = raw_logprobs[i] if raw_logprobs is not None else None
            outputs += self._isolated(seq, self._accept_sampled, seq, token_id, row, failed.get(i), now)
        return outputs

    def _isolated(self, seq: Sequence, work: Callable[..., list[RequestOutput]], *args) -> list[RequestOutput]:
        """Runs work(*args), one sequence's postprocessing; if it raises, only that request fails."""
        try:
            return work(*args)
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the others
            log.exception("request %s failed in postprocessing", seq.request_id)
            return [self._fail(seq, f"{type(e).__name__}: {e}")]

    def _accept_sampled(self, seq: Sequence, token_id: int, logprob_row, sampling_error: str | None,
                        now: float) -> list[RequestOutput]:
        if sampling_error is not None:
            raise RuntimeError(f"sampling failed: {sampling_error}")
        return [self.accept_token(seq, token_id, logprob_row, now)]

    def _accept_drafts(self, seq: Sequence, logits: torch.Tensor) -> list[RequestOutput]:
        """Emits what verification keeps (Sampler.verify_draft): each token through the usual finish,
        stop-string and text checks; the K/V computed for a kept draft becomes the sequence's own."""
        draft, seq.draft_token_ids = seq.draft_token_ids, []
        emitted = self.sampler.verify_draft(logits, seq, draft)
        self.num_draft_tokens += len(draft)
        outputs: list[RequestOutput] = []
        now = time.time()
        for i, token_id in enumerate(emitted):
            outputs.append(self.accept_token(seq, token_id, None, now))
            if seq.is_finished or i == len(emitted) - 1:
                break
            seq.num_computed_tokens += 1  # a kept draft: its K/V at this position is the token's
            self.num_accepted_draft_tokens += 1
        if not seq.is_finished:
            self.block_manager.register_full_blocks(seq)
        return outputs

    def accept_token(self, seq: Sequence, token_id: int, logprob_row, now: float) -> RequestOutput:
        prompt_logprobs = None
        if seq.first_token_time is None:
            seq.first_token_time = seq.prefill_done_time = now
            prompt_logprobs = seq.prompt_logprobs
            self._admit_children(seq)
        if seq.params.max_tokens == 0:  # scoring only: the prompt is scored, nothing is generated
            self._finish(seq, "length")
            return self.outputs.build(seq, [], "", True, None, prompt_logprobs=prompt_logprobs)
        seq.append_token(token_id)
        finish = self.outputs.check_finish(seq, token_id)
        text, finish = self.outputs.text_for(seq, token_id, finish)
        logprobs = self.outputs.logprobs_for(seq, token_id, logprob_row)
        if finish is not None:
            self._finish(seq, finish)
        return self.outputs.build(seq, [token_id], text, finish is not None, logprobs, prompt_logprobs=prompt_logprobs)

    def _admit_children(self, parent: Sequence) -> None:
        # The parent's prompt blocks are now in the prefix cache: the other choices reuse them.
        for child in self.deferred_children.pop(parent.request_id, []):
            child.prompt_logprobs = parent.prompt_logprobs  # the same prompt, scored once
            self.scheduler.add(child, front=True)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.scheduler.finish(seq, reason)
        self._release(seq)
        seqs = self.requests.get(seq.request_id, [])
        if all(s.is_finished for s in seqs) and seq.request_id not in self.deferred_children:
            self.requests.pop(seq.request_id, None)

    def _fail(self, seq: Sequence, message: str) -> RequestOutput:
        # A first choice that fails before its first token still admits the others: they must run
        # (or fail) on their own, or the request would never finish.
        self._admit_children(seq)
        self._finish(seq, "error")
        return self.outputs.build(seq, [], "", True, None, error=message)

    def _release(self, seq: Sequence) -> None:
        self.sampler.release(seq)
        self.outputs.release(seq)

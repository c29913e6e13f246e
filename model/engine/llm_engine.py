"""LLMEngine: add_request / abort / step / stats. A step is schedule -> run -> postprocess.

    engine = LLMEngine.from_model("default", EngineConfig())
    outputs = engine.generate(["Hello"], SamplingParams(max_tokens=32))
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Callable

import torch

from model.config import EngineConfig
from model.engine.block_manager import BlockManager
from model.engine.model_runner import ModelRunner, StepOutput
from model.engine.ngram_proposer import can_speculate, propose
from model.engine.output_processor import OutputProcessor
from model.engine.outputs import EngineStats, RequestOutput, RequestRejected
from model.engine.sampler import Sampler
from model.engine.scheduler import Scheduler, SchedulerOutput
from model.engine.sequence import Sequence
from model.loader import LoadedModel, load_model
from model.models.decoder import CausalLM
from model.sampling_params import SamplingParams
from model.tokenizer import Tokenizer

log = logging.getLogger("glmserve.engine")


class LLMEngine:
    def __init__(self, model: CausalLM, engine_config: EngineConfig, tokenizer: Tokenizer | None = None,
                 loaded: LoadedModel | None = None) -> None:
        self.config = engine_config
        self.model_config = model.config
        self.tokenizer = tokenizer
        self.loaded = loaded
        self.max_model_len = min(engine_config.max_model_len or model.config.max_position_embeddings,
                                 model.config.max_position_embeddings)
        self.runner = ModelRunner(model, engine_config, self.max_model_len)
        self.block_manager = BlockManager(self.runner.num_blocks, engine_config.block_size,
                                          engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, engine_config.max_num_seqs, engine_config.max_num_batched_tokens)
        eos = tuple(tokenizer.eos_token_ids) if tokenizer else tuple(model.config.eos_token_ids)
        self.sampler = Sampler(eos, self.runner.device)
        self.outputs = OutputProcessor(tokenizer, eos, self.max_model_len)
        self.requests: dict[str, list[Sequence]] = {}  # request_id -> its live sequences
        self.deferred_children: dict[str, list[Sequence]] = {}  # n > 1: admitted once the prompt is cached
        self.fault_hook: Callable[[str], None] | None = None  # tests inject per-request failures here
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        self.num_steps = 0
        self.num_draft_tokens = 0  # speculative tokens proposed, and kept after verification
        self.num_accepted_draft_tokens = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tokens generated in the step)

    @classmethod
    def from_model(cls, source: str, engine_config: EngineConfig | None = None,
                   cache_dir: str | None = None) -> "LLMEngine":
        ec = engine_config or EngineConfig()
        if ec.num_threads:
            torch.set_num_threads(ec.num_threads)
        loaded = load_model(source, device=ec.resolved_device(), dtype=ec.resolved_dtype(), cache_dir=cache_dir)
        # a checkpoint without tokenizer files still serves token ids (no text, no stop strings)
        has_tokenizer = any(os.path.exists(os.path.join(loaded.path, f))
                            for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        return cls(loaded.model, ec, Tokenizer(loaded.path, ec.trust_remote_code) if has_tokenizer else None, loaded)

    # ---- requests ----------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raises RequestRejected for a request that could never run. Touches no state."""
        n = len(prompt_token_ids)
        if n == 0:
            raise RequestRejected("the prompt is empty", code="invalid_prompt", param="prompt")
        if n + params.max_tokens > self.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} for the completion).",
                param="max_tokens" if n < self.max_model_len else "messages")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if n + params.max_tokens > capacity:
            raise RequestRejected(
                f"The KV cache holds {capacity} tokens ({self.block_manager.num_blocks} blocks of "
                f"{self.block_manager.block_size}); this request needs {n + params.max_tokens} "
                f"({n} prompt + {params.max_tokens} max_tokens).", code="kv_cache_too_small", param="max_tokens")
        vocab = self.model_config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_token_ids):
            raise RequestRejected(f"prompt token ids must be in [0, {vocab})", code="invalid_prompt", param="prompt")
        params.check_vocab(vocab)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        self.validate(prompt_token_ids, params)
        seqs = [Sequence(request_id, list(prompt_token_ids), params, index=i) for i in range(params.n)]
        self.requests[request_id] = seqs
        self.scheduler.add(seqs[0])
        if params.n > 1:
            self.deferred_children[request_id] = seqs[1:]

    def abort(self, request_id: str) -> list[RequestOutput]:
        outs = []
        for seq in self.requests.pop(request_id, []):
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
                outs.append(self.outputs.build(seq, [], "", True, None))
            self._release(seq)
        self.deferred_children.pop(request_id, None)
        return outs

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the step ----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.config.num_speculative_tokens:
            self._propose_drafts()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        step = self.runner.run(sched.scheduled)
        self.scheduler.after_step(sched)
        for scores in step.prompt_scores:
            self.outputs.record_prompt_scores(scores)
        if any(item.num_draft for item in step.sampling):
            outputs = self._postprocess_with_drafts(sched, step)
        else:
            outputs = self._postprocess(sched, step.logits, [item.seq for item in step.sampling])
        generated = sum(len(out.token_ids) for out in outputs)
        self.num_generation_tokens_total += generated
        self._recent.append((time.time(), generated))
        return outputs

    def _postprocess_with_drafts(self, sched: SchedulerOutput, step: StepOutput) -> list[RequestOutput]:
        """A drafted sequence brings 1 + num_draft logits rows (verified here); the others one row each
        (sampled as usual)."""
        plain_rows, plain_seqs, drafted = [], [], []
        row = 0
        for item in step.sampling:
            if item.num_draft:
                drafted.append((item.seq, step.logits[row:row + 1 + item.num_draft]))
            else:
                plain_rows.append(row)
                plain_seqs.append(item.seq)
            row += 1 + item.num_draft
        outputs = self._postprocess(sched, step.logits[plain_rows], plain_seqs)
        for seq, rows in drafted:
            outputs += self._isolated(seq, self._accept_drafts, seq, rows)
        return outputs

    def _propose_drafts(self) -> None:
        running = self.scheduler.running
        for seq in running:
            seq.draft_token_ids = []
        decoding = [seq for seq in running if seq.num_uncomputed_tokens == 1]
        if len(decoding) > self.config.speculative_max_batch:
            return
        k = self.config.num_speculative_tokens
        for seq in decoding:
            if can_speculate(seq):
                room = min(k, seq.params.max_tokens - seq.num_output_tokens - 1,
                           self.max_model_len - seq.num_tokens - 1)
                seq.draft_token_ids = propose(seq.token_ids, room)

    def _accept_drafts(self, seq: Sequence, logits: torch.Tensor) -> list[RequestOutput]:
        """Emits what verification keeps (Sampler.verify_draft): each token through the usual finish,
        stop-string and text checks; the K/V computed for a kept draft becomes the sequence's own."""
        draft, seq.draft_token_ids = seq.draft_token_ids, []
        emitted = self.sampler.verify_draft(logits, seq, draft)
        self.num_draft_tokens += len(draft)
        outputs: list[RequestOutput] = []
        now = time.time()
        for i, token_id in enumerate(emitted):
            outputs.append(self._accept_token(seq, token_id, None, now))
            if seq.is_finished or i == len(emitted) - 1:
                break
            seq.num_computed_tokens += 1  # a kept draft: its K/V at this position is the token's
            self.num_accepted_draft_tokens += 1
        if not seq.is_finished:
            self.block_manager.register_full_blocks(seq)
        return outputs

    def _isolated(self, seq: Sequence, work: Callable[..., list[RequestOutput]], *args) -> list[RequestOutput]:
        """Runs work(*args), one sequence's postprocessing; if it raises, only that request fails."""
        try:
            if self.fault_hook is not None:
                self.fault_hook(seq.request_id)
            return work(*args)
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the others
            log.exception("request %s failed in postprocessing", seq.request_id)
            return [self._fail(seq, f"{type(e).__name__}: {e}")]

    def _postprocess(self, sched: SchedulerOutput, logits: torch.Tensor, seqs: list[Sequence]) -> list[RequestOutput]:
        self.num_steps += 1
        self.num_prompt_tokens_total += sum(s.num_tokens for s in sched.scheduled if s.seq.num_output_tokens == 0)
        outputs: list[RequestOutput] = []
        tokens, raw_logprobs, failed = self.sampler(logits, seqs) if seqs else ([], None, {})
        now = time.time()
        for i, (seq, token_id) in enumerate(zip(seqs, tokens)):
            row = raw_logprobs[i] if raw_logprobs is not None else None
            outputs += self._isolated(seq, self._accept_sampled, seq, token_id, row, failed.get(i), now)
        return outputs

    def _accept_sampled(self, seq: Sequence, token_id: int, logprob_row, sampling_error: str | None,
                        now: float) -> list[RequestOutput]:
        if sampling_error is not None:
            raise RuntimeError(f"sampling failed: {sampling_error}")
        return [self._accept_token(seq, token_id, logprob_row, now)]

    def _accept_token(self, seq: Sequence, token_id: int, logprob_row, now: float) -> RequestOutput:
        prompt_logprobs = None
        if seq.first_token_time is None:
            seq.first_token_time = seq.prefill_done_time = now
            prompt_logprobs = seq.prompt_logprobs
            self._admit_children(seq)
        if seq.params.max_tokens == 0:  # scoring only: the prompt is scored, nothing is generated
            seq.finish_reason = "length"
            self._finish(seq, "length")
            return self.outputs.build(seq, [], "", True, None, prompt_logprobs=prompt_logprobs)
        seq.append_token(token_id)
        finish = self.outputs.check_finish(seq, token_id)
        text, finish = self.outputs.text_for(seq, token_id, finish)
        logprobs = self.outputs.logprobs_for(seq, token_id, logprob_row)
        if finish is not None:
            seq.finish_reason = finish
            self._finish(seq, finish)
        return self.outputs.build(seq, [token_id], text, finish is not None, logprobs, prompt_logprobs=prompt_logprobs)

    def _admit_children(self, parent: Sequence) -> None:
        # The parent's prompt blocks are now in the prefix cache: the other choices reuse them.
        for child in self.deferred_children.pop(parent.request_id, []):
            child.prompt_logprobs = parent.prompt_logprobs  # the same prompt, scored once
            self.scheduler.add(child, front=True)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        self._release(seq)
        self._forget_if_done(seq.request_id)

    def _fail(self, seq: Sequence, message: str) -> RequestOutput:
        seq.finish_reason = "error"
        self._finish(seq, "error")
        return self.outputs.build(seq, [], "", True, None, error=message)

    def _release(self, seq: Sequence) -> None:
        self.sampler.release(seq)
        self.outputs.release(seq)

    def _forget_if_done(self, request_id: str) -> None:
        seqs = self.requests.get(request_id, [])
        if all(s.is_finished for s in seqs) and request_id not in self.deferred_children:
            self.requests.pop(request_id, None)

    # ---- reporting and batch use -------------------------------------------------------------------
    def stats(self) -> EngineStats:
        bm = self.block_manager
        now = time.time()
        recent = [(t, n) for t, n in self._recent if now - t < 10.0]
        throughput = 0.0
        if len(recent) > 1 and recent[-1][0] > recent[0][0]:
            throughput = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0])
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks, block_size=bm.block_size,
            kv_cache_usage=bm.usage, prefix_cache_queries=bm.prefix_queries, prefix_cache_hits=bm.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions, prompt_tokens_total=self.num_prompt_tokens_total,
            generation_tokens_total=self.num_generation_tokens_total, generation_throughput=throughput,
            max_model_len=self.max_model_len, steps_total=self.num_steps,
            spec_draft_tokens_total=self.num_draft_tokens, spec_accepted_tokens_total=self.num_accepted_draft_tokens)

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> list[list[RequestOutput]]:
        """Offline batch generation: returns, per prompt, one merged RequestOutput per choice."""
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for i, prompt in enumerate(ids):
            self.add_request(f"offline-{i}", prompt, params)
        merged: dict[tuple[str, int], RequestOutput] = {}
        while self.has_unfinished() or self.deferred_children:
            for out in self.step():
                key = (out.request_id, out.index)
                if key in merged:
                    prev = merged[key]
                    prev.token_ids += out.token_ids
                    prev.text_delta += out.text_delta
                    prev.finished, prev.finish_reason = out.finished, out.finish_reason
                    prev.num_output_tokens, prev.stop_reason = out.num_output_tokens, out.stop_reason
                    if out.logprobs:
                        prev.logprobs = (prev.logprobs or []) + out.logprobs
                    prev.prompt_logprobs = prev.prompt_logprobs or out.prompt_logprobs
                else:
                    merged[key] = out
        return [[merged[(f"offline-{i}", j)] for j in range(params.n)] for i in range(len(ids))]

"""Postprocessing of sampled tokens: finish checks (eos, stop ids, max_tokens, context), incremental
detokenizing, stop strings matched across token boundaries, logprobs, and RequestOutput building."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob
from model.engine.sequence import Sequence
from model.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer

if TYPE_CHECKING:
    from model.engine.model_runner import PromptScores


@dataclass
class SeqTextState:
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None, eos_token_ids: tuple[int, ...], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.states: dict[int, SeqTextState] = {}

    def release(self, seq: Sequence) -> None:
        self.states.pop(seq.seq_id, None)

    def _state(self, seq: Sequence) -> SeqTextState | None:
        if self.tokenizer is None:
            return None
        st = self.states.get(seq.seq_id)
        if st is None:
            p = seq.params
            st = SeqTextState(self.tokenizer.detokenizer(p.skip_special_tokens),
                              StopStringMatcher(p.stop, p.include_stop_str_in_output))
            self.states[seq.seq_id] = st
        return st

    def check_finish(self, seq: Sequence, token_id: int) -> str | None:
        """finish_reason implied by the token just appended, before text is looked at."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            if not p.ignore_eos and token_id in self.eos_token_ids:
                seq.stop_reason = None
                return "stop"
            if token_id in p.stop_token_ids:
                seq.stop_reason = token_id
                return "stop"
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def text_for(self, seq: Sequence, token_id: int, finish_reason: str | None) -> tuple[str, str | None]:
        """Text delta for the new token; a matched stop string turns finish_reason into "stop"."""
        st = self._state(seq)
        if st is None:
            return "", finish_reason
        stopped_by_token = finish_reason == "stop"
        # eos / stop tokens are not part of the text (as OpenAI and vLLM report it)
        raw = "" if stopped_by_token else st.detokenizer.add(token_id)
        if finish_reason is not None:
            raw += st.detokenizer.flush()
        text, matched = st.stops.push(raw)
        if matched is not None:
            seq.stop_reason = matched
            return text, "stop"
        if finish_reason is not None:
            text += st.stops.flush()
        return text, finish_reason

    def logprobs_for(self, seq: Sequence, token_id: int, row: torch.Tensor | None) -> list[TokenLogprob] | None:
        k = seq.params.logprobs
        if k is None or row is None:
            return None
        top_ids, top_values = [], []
        if k > 0:
            values, ids = row.topk(k)
            top_ids, top_values = ids.tolist(), values.tolist()
        return [self._token_logprob(token_id, float(row[token_id]), top_ids, top_values)]

    def record_prompt_scores(self, scores: "PromptScores") -> None:
        """Appends a chunk's prompt-token logprobs to its sequence, in prompt order."""
        seq = scores.seq
        if seq.prompt_logprobs is None or scores.first_position != len(seq.prompt_logprobs):
            return  # already scored (a recompute after preemption covers the same positions)
        for token_id, logprob, rank, top_ids, top_values in zip(scores.token_ids, scores.logprobs, scores.ranks,
                                                                scores.top_ids, scores.top_logprobs):
            seq.prompt_logprobs.append(self._token_logprob(token_id, logprob, top_ids, top_values, rank))

    def _token_logprob(self, token_id: int, logprob: float, top_ids: list[int], top_values: list[float],
                       rank: int | None = None) -> TokenLogprob:
        """A token's logprob with its text and raw bytes, and those of its top alternatives."""
        decode = self.tokenizer.token_to_str if self.tokenizer else str
        to_bytes = self.tokenizer.token_bytes if self.tokenizer else (lambda i: list(str(i).encode()))
        top = [(i, decode(i), v) for i, v in zip(top_ids, top_values)]
        return TokenLogprob(token_id, decode(token_id), logprob, top, to_bytes(token_id),
                            [to_bytes(i) for i in top_ids], rank)

    def build(self, seq: Sequence, token_ids: list[int], text: str, finished: bool,
              logprobs: list[TokenLogprob] | None, error: str | None = None,
              prompt_logprobs: list[TokenLogprob | None] | None = None) -> RequestOutput:
        metrics = RequestMetrics(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                                 seq.finished_time, seq.prefill_done_time)
        return RequestOutput(
            request_id=seq.request_id, index=seq.index, token_ids=token_ids, text_delta=text, finished=finished,
            finish_reason=seq.finish_reason if finished else None, num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens, num_output_tokens=seq.num_output_tokens,
            stop_reason=seq.stop_reason if finished else None, logprobs=logprobs, metrics=metrics, error=error,
            prompt_logprobs=prompt_logprobs, embedding=seq.embedding if finished else None)

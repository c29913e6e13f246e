"""How the task endpoints drive the engine: many engine requests behind one HTTP request.

    runner = TaskRunner(state, ctx, body)                      # ctx from respond.begin_request
    texts = await runner.complete_all([(ids, 128), (ids2, 128)])   # concurrently; the engine batches them
    async for delta in runner.stream(ids, max_tokens=256): ...

Every engine request goes through engine_stream.run_engine, so usage, timings, metrics, the drain and
aborts (client gone -> task cancelled -> engine.abort) work as they do for chat completions.

Fair sharing: one HTTP request holds one admission ticket however many engine requests it fans out
into, so its fan-out is capped instead: at most --task-max-concurrent-chunks of them (default a
quarter of --max-num-seqs) are in the engine at once (a 200,000-character word used to take all 8
sequence slots for 150 s). They also
carry the request's fairness key, so the scheduler counts them against the client's share, and run
--task-priority-offset (1) priority levels below the request's own: a chat of the same priority that
finds every slot taken preempts a task chunk instead of waiting for one (the chunk is recomputed
later, mostly from the prefix cache). The
request's `max_tokens` caps the tokens generated across all its chunks: a chunk reserves at most
what is left unreserved as its own max_tokens and gives back what it did not use when it ends, so
the total never exceeds the cap (chunks that find nothing left generate nothing). When the cap cut
the answer (a chunk got less than it asked for and used it all, or got nothing), `finish_reason` is
"length", as on chat completions; otherwise "stop".
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from model import SamplingParams
from server.errors import APIError
from server.serving.admission import sampling_params
from server.serving.engine_stream import run_engine
from server.serving.respond import RequestContext
from server.state import ServerState

T = TypeVar("T")


def check_task_input(state: ServerState, text: str) -> None:
    """The documented input-size limit (--task-max-input-chars), before any tokenizing or planning."""
    limit = state.settings.task_max_input_chars
    if len(text) > limit:
        raise APIError(400, f"text is {len(text)} characters long; this server accepts at most {limit} "
                       "(--task-max-input-chars)", param="text", code="input_too_long")


class TaskRunner:
    def __init__(self, state: ServerState, ctx: RequestContext, body: Any) -> None:
        self.state = state
        self.ctx = ctx
        self.body = body  # a TaskSamplingFields: owns to_sampling_params
        self._ids = itertools.count()
        settings = state.settings
        self._slots = asyncio.Semaphore(settings.task_max_concurrent_chunks or max(1, settings.max_num_seqs // 4))
        self.max_output_tokens: int | None = getattr(body, "max_tokens", None)  # across all chunks
        self.num_reserved_tokens = 0  # generated so far plus what running chunks may still generate
        self.cut_by_max_tokens = False  # the request's max_tokens cut a chunk short (or left it nothing)

    @property
    def finish_reason(self) -> str:
        """Of the whole answer: "length" when the request's max_tokens cut it, else "stop"."""
        return "length" if self.cut_by_max_tokens else "stop"

    @property
    def tokenizer(self) -> Any:
        return self.state.engine.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def room(self, num_prompt_tokens: int) -> int:
        """Tokens left for the output after this prompt."""
        return self.state.context_limit - num_prompt_tokens

    def params(self, num_prompt_tokens: int, max_tokens: int, min_tokens: int = 0) -> SamplingParams:
        room = self.room(num_prompt_tokens)
        if room < 1:  # the planners size chunks so this cannot happen; say so clearly if it does
            raise APIError(400, f"a task prompt of {num_prompt_tokens} tokens leaves no room in the context of "
                           f"{self.state.context_limit} tokens", param="text", code="context_length_exceeded")
        max_tokens = max(1, min(max_tokens, room))
        build = lambda n, **_: self.body.to_sampling_params(n, min_tokens=min_tokens)  # noqa: E731
        params = sampling_params(self.state, build, max_tokens)
        # background work: its chunks yield sequence slots to interactive requests of the asked priority
        priority = min(params.priority + self.state.settings.task_priority_offset, 2 ** 31 - 1)
        return dataclasses.replace(params, priority=priority)

    async def stream(self, prompt_ids: list[int], max_tokens: int, min_tokens: int = 0) -> AsyncIterator[str]:
        """Text deltas of one generation. Closing the iterator early aborts it in the engine. It
        generates at most what it could reserve of the request's max_tokens (nothing once spent)."""
        async with self._slots:
            params = self.params(len(prompt_ids), max_tokens, min_tokens)
            reserved = params.max_tokens
            capped = False  # this chunk may generate less than it asked for because of the cap
            if self.max_output_tokens is not None:
                reserved = min(reserved, self.max_output_tokens - self.num_reserved_tokens)
                if reserved < 1:
                    self.cut_by_max_tokens = True  # this chunk's text is missing from the answer
                    return
                if reserved < params.max_tokens:
                    capped = True
                    params = self.params(len(prompt_ids), reserved, min(min_tokens, reserved))
            self.num_reserved_tokens += reserved
            generated = 0
            request_id = f"{self.ctx.request_id}-{next(self._ids)}"
            outputs = run_engine(self.state, self.ctx.ticket, self.ctx.trace, request_id, prompt_ids, params)
            try:
                async for out in outputs:
                    generated += len(out.token_ids)
                    if capped and out.finished and out.finish_reason == "length":
                        self.cut_by_max_tokens = True
                    if out.text_delta:
                        yield out.text_delta
            finally:
                self.num_reserved_tokens -= reserved - min(generated, reserved)  # give back the unused part
                await outputs.aclose()

    async def complete(self, prompt_ids: list[int], max_tokens: int) -> str:
        pieces = [delta async for delta in self.stream(prompt_ids, max_tokens)]
        return "".join(pieces).strip()

    async def complete_all(self, jobs: list[tuple[list[int], int]]) -> list[str]:
        """(prompt ids, max_tokens) per job -> texts in the same order, generated concurrently."""
        return await gather_in_order([lambda ids=ids, n=n: self.complete(ids, n) for ids, n in jobs])


async def gather_in_order(makers: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Runs the awaitables concurrently; results in input order. The first failure, or cancelling
    the caller, cancels the rest (asyncio.gather would leave them running)."""
    tasks = [asyncio.ensure_future(make()) for make in makers]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

"""How the task endpoints drive the engine: many engine requests behind one HTTP request.

    runner = TaskRunner(state, ctx, body)                      # ctx from respond.begin_request
    texts = await runner.complete_all([(ids, 128), (ids2, 128)])   # concurrently; the engine batches them
    async for delta in runner.stream(ids, max_tokens=256): ...

Every engine request goes through engine_stream.run_engine, so usage, timings, metrics, the drain and
aborts (client gone -> task cancelled -> engine.abort) work as they do for chat completions. At most
max_num_seqs of one HTTP request's engine requests are in flight, so a 200,000-character document
does not fill the engine's queue ahead of other clients.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from model import SamplingParams
from server.errors import APIError
from server.serving.admission import sampling_params
from server.serving.engine_stream import run_engine
from server.serving.respond import RequestContext
from server.state import ServerState

T = TypeVar("T")


class TaskRunner:
    def __init__(self, state: ServerState, ctx: RequestContext, body: Any) -> None:
        self.state = state
        self.ctx = ctx
        self.body = body  # a TaskSamplingFields: owns to_sampling_params
        self._ids = itertools.count()
        self._slots = asyncio.Semaphore(max(1, state.settings.max_num_seqs))

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
        return sampling_params(self.state, build, max_tokens)

    async def stream(self, prompt_ids: list[int], max_tokens: int, min_tokens: int = 0) -> AsyncIterator[str]:
        """Text deltas of one generation. Closing the iterator early aborts it in the engine."""
        params = self.params(len(prompt_ids), max_tokens, min_tokens)
        request_id = f"{self.ctx.request_id}-{next(self._ids)}"
        async with self._slots:
            outputs = run_engine(self.state, self.ctx.ticket, self.ctx.trace, request_id, prompt_ids, params)
            try:
                async for out in outputs:
                    if out.text_delta:
                        yield out.text_delta
            finally:
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

"""Running requests in the engine: error mapping, merging several prompts' streams, and cancelling
the work when the client goes away."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import AsyncIterator, Awaitable, TypeVar

from starlette.requests import Request

from model import EngineDeadError, RequestOutput, RequestRejected, SamplingParams, SamplingParamsError
from server.errors import APIError, ClientDisconnected, bad_request
from server.lora import ADAPTER
from server.serving.trace import RequestTrace
from server.state import ServerState, Ticket

T = TypeVar("T")


_END = object()


async def run_engine(state: ServerState, ticket: Ticket, trace: RequestTrace, request_id: str,
                     prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
    """engine.generate with its failures as APIErrors.

    A pump task moves the engine's outputs into a queue that the server can also write to: the drain
    puts an APIError there to end a request that outlived --drain-timeout. Leaving early (client gone,
    cut) cancels the pump, which closes engine.generate, which aborts the request in the engine."""
    queue: asyncio.Queue = asyncio.Queue()
    adapter = ADAPTER.get()  # the LoRA adapter `model` named (server/lora.py), None = the base
    if adapter is not None and params.lora_name is None:
        params = dataclasses.replace(params, lora_name=adapter)
    if ticket.fairness_key is not None and params.fairness_key is None:  # the scheduler shares slots by it
        params = dataclasses.replace(params, fairness_key=ticket.fairness_key)

    async def pump() -> None:
        try:
            async for out in state.engine.generate(request_id, prompt_ids, params):
                queue.put_nowait(out)
            queue.put_nowait(_END)
        except Exception as e:  # noqa: BLE001 - handed to the consumer below
            queue.put_nowait(e)

    task = asyncio.create_task(pump())
    state.engine_queues[request_id] = queue
    if params.lora_name is not None:
        state.metrics.observe_lora_request(params.lora_name)
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            ticket.started()
            trace.on_output(item)
            if item.finished:
                state.record_finished(item.num_output_tokens)  # the mean output length behind Retry-After
            if params.lora_name is not None:
                state.metrics.observe_lora_tokens(params.lora_name, len(item.token_ids))
            if item.finished and item.finish_reason == "error":
                raise APIError(500, f"generation failed: {item.error or 'unknown error'}", code="generation_failed")
            if item.finished and item.finish_reason == "abort":
                raise APIError(503, "the request was aborted by the engine", code="request_aborted")
            yield item
    except RequestRejected as e:
        raise APIError(400, str(e), code=e.code, param=e.param) from e
    except SamplingParamsError as e:
        raise bad_request(str(e), param=e.param) from e
    except EngineDeadError as e:
        raise APIError(503, f"the engine is not running: {e}", code="engine_dead") from e
    finally:
        state.engine_queues.pop(request_id, None)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Items of several async iterators in arrival order; the first failure cancels the rest."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put(("item", item))
            await queue.put(("done", None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put(("error", e))

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            kind, value = await queue.get()
            if kind == "item":
                yield value  # type: ignore[misc]
            elif kind == "done":
                remaining -= 1
            else:
                raise value  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work` unless the client disconnects first; then cancels it (aborting the engine request)
    and raises ClientDisconnected. Non-streaming handlers use this: Starlette does not cancel them."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected()


async def _wait_for_disconnect(request: Request) -> None:
    # After the body is read, receive() only returns once the client goes away.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

"""AsyncEngine: the step loop on its own thread, per-request async streams, abort on cancel.

The server's event loop never runs model code: `generate()` validates, hands the request to the loop
thread through an inbox, and awaits outputs that the thread delivers with call_soon_threadsafe.

    engine = AsyncEngine.from_model("default", EngineConfig()); engine.start()
    async for out in engine.generate("req-1", prompt_ids, SamplingParams(max_tokens=64)): ...
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Any, AsyncIterator

from model.config import EngineConfig
from model.engine.llm_engine import LLMEngine
from model.engine.outputs import EngineDeadError, EngineStats, RequestOutput
from model.sampling_params import SamplingParams

log = logging.getLogger("glmserve.engine")


class _Stream:
    """One request's outputs, delivered from the loop thread into the caller's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, num_choices: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.unfinished = num_choices

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, engine: LLMEngine | None = None) -> None:
        self.engine = engine  # type: ignore[assignment]  (set by the loop thread in from_model)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dead: BaseException | None = None
        self._stats = engine.stats() if engine is not None else None

    @classmethod
    def from_model(cls, source: str, engine_config: EngineConfig | None = None,
                   cache_dir: str | None = None) -> "AsyncEngine":
        """Loads the model on the loop thread itself and waits until it is ready.

        All torch work must happen on one thread: two threads that each run OpenMP parallel regions keep
        two spinning worker teams on this 2-core machine and decode ~40% slower."""
        self = cls()
        loaded = threading.Event()
        failure: list[BaseException] = []

        def build_then_run() -> None:
            try:
                self.engine = LLMEngine.from_model(source, engine_config, cache_dir)
                self._stats = self.engine.stats()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(e)
                return
            finally:
                loaded.set()
            self._run()

        self._thread = threading.Thread(target=build_then_run, name="glmserve-engine", daemon=True)
        self._thread.start()
        loaded.wait()
        if failure:
            raise failure[0]
        return self

    # ---- what the server reads -----------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def chat_template(self):
        if not hasattr(self, "_chat_template"):
            from model.chat_template import ChatTemplate

            self._chat_template = ChatTemplate(self.engine.tokenizer)
        return self._chat_template

    @property
    def model_config(self):
        return self.engine.model_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def model_path(self) -> str | None:
        return self.engine.loaded.path if self.engine.loaded else None

    @property
    def quantization(self) -> str:
        return self.engine.runner.quantization

    @property
    def weight_bytes(self) -> int:
        return self.engine.runner.weight_bytes

    @property
    def provenance(self) -> dict:
        return self.engine.loaded.provenance if self.engine.loaded else {}

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    def stats(self) -> EngineStats:
        return self._stats

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="glmserve-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- requests ----------------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if self._dead is not None or self._thread is None:
            raise EngineDeadError(f"the engine loop is not running: {self._dead!r}")
        self.engine.validate(prompt_token_ids, params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in flight")
        stream = _Stream(asyncio.get_running_loop(), params.n)
        self._streams[request_id] = stream
        self._inbox.put(("add", (request_id, list(prompt_token_ids), params)))
        self._wake.set()
        finished = False
        try:
            while stream.unfinished > 0:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    stream.unfinished -= 1
                yield item
            finished = True
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._inbox.put(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    # ---- LoRA adapters: run on the loop thread between steps, so no step sees half a change -----------
    async def load_lora(self, name: str, path: str):
        return await self._on_loop(self.engine.load_lora, name, path)

    async def unload_lora(self, name: str):
        return await self._on_loop(self.engine.unload_lora, name)

    def loras(self) -> list:
        return self.engine.loras()

    async def _on_loop(self, fn, *args):
        return await asyncio.wrap_future(self._submit(fn, *args))

    def call_on_loop(self, fn, *args):
        """fn(*args) on the loop thread, waited for here (start-up, before the server listens)."""
        return self._submit(fn, *args).result()

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        if self._dead is not None or self._thread is None:
            raise EngineDeadError(f"the engine loop is not running: {self._dead!r}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(("call", (future, fn, args)))
        self._wake.set()
        return future

    # ---- the loop thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self._stats = self.engine.stats()
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out)
                self._stats = self.engine.stats()
        except BaseException as e:  # noqa: BLE001 - any loop failure kills the engine, visibly
            log.exception("engine loop died")
            self._dead = e
            dead = EngineDeadError(f"engine loop died: {type(e).__name__}: {e}")
            for stream in list(self._streams.values()):
                stream.put(dead)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                request_id, prompt, params = payload
                try:
                    self.engine.enqueue(request_id, prompt, params)  # validated in generate()
                except Exception as e:  # noqa: BLE001 - reported to that request only
                    stream = self._streams.get(request_id)
                    if stream is not None:
                        stream.put(e)
            elif kind == "abort":
                for out in self.engine.abort(payload):
                    self._deliver(out)
            elif kind == "call":
                future, fn, args = payload
                try:
                    future.set_result(fn(*args))
                except Exception as e:  # noqa: BLE001 - the caller's error, not the loop's
                    future.set_exception(e)

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            if not out.finished:  # nobody listens any more: stop computing it
                self.engine.abort(out.request_id)
            return
        stream.put(out)

"""Graceful shutdown. On SIGTERM (or Ctrl-C) the server keeps listening but turns /ready to 503 and
new /v1 requests to 503, lets running requests and streams finish for up to --drain-timeout seconds,
aborts what is left (those streams end with an error event and [DONE]), then exits with status 0.
A second signal stops at once.

If the engine loop dies, the process cannot serve again: in-flight requests end at once with an
engine_dead error (the last SSE event of a stream), the same drain runs, and the process exits with
ENGINE_DEAD_EXIT_CODE so the orchestrator (Docker restart policy, Kubernetes) starts a fresh one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from server.errors import APIError
from server.state import ServerState

log = logging.getLogger("glmserve.server")
ABORT_GRACE_S = 1.0  # after aborting, time for streams to send their error event before they are cut
ENGINE_DEAD_EXIT_CODE = 3


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_requested = False
        self._drain_task: asyncio.Task | None = None
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals on purpose: uvicorn re-raises those after shutdown, and the
        # process would then die of the signal instead of exiting 0.
        if self._drain_requested:
            log.warning("second signal: stopping without waiting")
            AppStatus.should_exit = True
            self.should_exit = True
            self.force_exit = True
            return
        self._drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        if not self._drain_requested and not self.state.engine.is_alive:
            self._engine_died()
        if self._drain_requested and self._drain_task is None:
            self._drain_task = asyncio.create_task(self.drain())
        return await super().on_tick(counter)

    def _engine_died(self) -> None:
        """on_tick (every 0.1 s) found the loop thread dead: fail what is in flight, then drain and exit."""
        log.critical("engine loop died: ending in-flight requests and exiting with %d", ENGINE_DEAD_EXIT_CODE)
        self.exit_code = ENGINE_DEAD_EXIT_CODE
        # streams normally get EngineDeadError from the engine; this also covers one added as it died
        self.state.cut_all(APIError(503, "the engine loop died; the server is restarting", code="engine_dead"))
        self._drain_requested = True

    async def drain(self) -> None:
        state = self.state
        state.draining = True
        timeout = state.settings.drain_timeout
        log.info("draining", extra={"fields": {"in_flight": state.num_http_in_flight, "drain_timeout": timeout}})
        deadline = time.monotonic() + timeout
        while state.num_http_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if state.num_http_in_flight > 0:
            cut = state.cut_all(APIError(503, f"the server is shutting down and the request did not finish within "
                                              f"the drain timeout ({timeout:g} s)", code="server_shutting_down"))
            log.warning("drain timeout: ended %d requests", cut)
            grace = time.monotonic() + ABORT_GRACE_S
            while state.num_http_in_flight > 0 and time.monotonic() < grace:
                await asyncio.sleep(0.05)
        AppStatus.should_exit = True  # sse-starlette closes whatever stream is still open
        log.info("drained", extra={"fields": {"in_flight": state.num_http_in_flight}})
        self.should_exit = True

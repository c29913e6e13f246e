"""Fault injection for tests: make chosen requests fail inside the engine's postprocessing.

    with failing_requests(llm_engine, hook):   # hook(request_id) raises for the requests that must fail
        ...

The hook runs where a real bug in token postprocessing would surface (Postprocessor.accept_token),
so the engine's failure isolation is what handles it. Product code carries no hook for this.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def failing_requests(engine, hook: Callable[[str], None]) -> Iterator[None]:
    post = engine.postprocessor
    original = post.accept_token

    def accept_token(seq, *args, **kwargs):
        hook(seq.request_id)
        return original(seq, *args, **kwargs)

    post.accept_token = accept_token  # an instance attribute shadows the method
    try:
        yield
    finally:
        del post.accept_token


def wait_engine_idle(async_engine, timeout: float = 60.0) -> bool:
    """True once the engine has nothing running or waiting (polls its stats)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = async_engine.engine.stats()
        if s.num_running == 0 and s.num_waiting == 0:
            return True
        time.sleep(0.02)
    return False

"""Live glmserve servers on a free loopback port, for tests that speak real HTTP.

    from tests.helpers.live_server import SubprocessServer, ThreadedServer

    with SubprocessServer(["--model", path, "--api-key", "k"]) as srv:     # `python -m server ...`
        OpenAI(base_url=srv.base_url + "/v1", api_key="k")
        srv.terminate(); srv.wait()                                          # real SIGTERM, exit code

    with ThreadedServer(Settings(model=path)) as srv:                        # uvicorn in a thread
        srv.engine.stats()                                                   # the AsyncEngine itself

ThreadedServer shares the test process, so a test can reach the engine (stats, tests/helpers/faults.py);
SubprocessServer is the real command line, signals and logs included.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, timeout: float, alive: Any = None, accept_503_self_test: bool = True) -> dict:
    """Polls /ready until 200; `alive()` returning False (the process died) aborts the wait."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("the server exited before it became ready")
        try:
            r = httpx.get(base_url + "/ready", timeout=2.0)
            last = r.json()
            if r.status_code == 200:
                return last
            if accept_503_self_test and last.get("status") == "self_test_failed":
                return last
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {base_url} not ready after {timeout}s (last /ready: {last})")


class SubprocessServer:
    """`python -m server <args> --host 127.0.0.1 --port <free>`, stdout+stderr in a log file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, ready_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "server", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **TEST_ENV, **(env or {})}
        self.ready_timeout = ready_timeout
        self.log_path = Path(tempfile.mkstemp(prefix="glmserve-test-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SubprocessServer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            self.ready = wait_ready(self.base_url, self.ready_timeout, alive=lambda: self.proc.poll() is None)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- server log ---\n{self.logs()[-4000:]}") from e
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> "SubprocessServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedServer:
    """uvicorn serving `build_app(settings)` (or a given app) on a thread of the test process."""

    def __init__(self, settings: Any = None, app: Any = None, ready_timeout: float = 120.0) -> None:
        import uvicorn

        if app is None:
            from server.__main__ import build_app

            settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
            app = build_app(settings)
            port = settings.port
        else:
            port = free_port()
        self.app = app
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready_timeout = ready_timeout
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                timeout_graceful_shutdown=2, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.glm

    @property
    def engine(self) -> Any:
        return self.state.engine

    def start(self) -> "ThreadedServer":
        self.thread.start()
        self.ready = wait_ready(self.base_url, self.ready_timeout, alive=self.thread.is_alive)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

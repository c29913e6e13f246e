"""One live `glmserve serve --model default` for every client and deploy test in the session.

Both tests/clients and tests/deploy ask for it through their `live_server` fixtures; a module-level
singleton makes them share one process (two session fixtures in two conftests would start two).
It is started through the console script, the command the Dockerfile runs, and stopped as soon as
the run moves on to a test outside those two folders (tests/conftest.py), or at exit.
"""
from __future__ import annotations

import atexit
import sys
from pathlib import Path

from tests.helpers.live_server import SubprocessServer

_server: SubprocessServer | None = None


def shared_default_server() -> SubprocessServer:
    global _server
    if _server is None:
        srv = SubprocessServer([])
        glmserve = str(Path(sys.executable).with_name("glmserve"))
        # self-test off: /ready is then 200 as soon as the model is loaded, and start-up is ~10 s shorter
        srv.args = [glmserve, "serve", "--model", "default", "--host", "127.0.0.1", "--port", str(srv.port),
                    "--self-test", "off", "--max-num-seqs", "8", "--kv-cache-memory", "128MiB"]
        srv.start()
        atexit.register(srv.stop)
        _server = srv
    return _server


SHARING_FOLDERS = ("clients", "deploy")


def stop_shared_default_server() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None

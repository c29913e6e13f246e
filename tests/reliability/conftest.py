"""Live servers for the reliability tests (tiny random model, loopback only).

    rel_server   one `python -m server` process for the session: API key KEY, --max-model-len 128,
                 16 sequences, oneDNN shape caches capped (the soak measures its RSS); fuzzing, bad
                 input, the disconnect storm, soak and security share it (each test leaves it idle,
                 and each checks it is healthy afterwards)
"""
from __future__ import annotations

import pytest

from tests.helpers.live_server import SubprocessServer
from tests.reliability.support import SERVER_ENV, SHAPE_CACHES_CAPPED, tiny_args

MAX_MODEL_LEN = 128


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def rel_server(tiny_llama_dir: str) -> SubprocessServer:
    args = tiny_args(tiny_llama_dir, "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "16")
    with SubprocessServer(args, env={**SERVER_ENV, **SHAPE_CACHES_CAPPED}) as srv:
        yield srv

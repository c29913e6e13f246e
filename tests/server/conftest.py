"""Live servers for the HTTP tests, one per session (starting one costs seconds on 2 shared cores).

    tiny_server      uvicorn in a thread over a random 2-layer Llama (fast, engine reachable for stats
                     and fault injection); API keys KEY (flag) and FILE_KEY (--api-key-file)
    client / aclient the official openai SDK (sync / async) pointed at tiny_server, retries off
    default_server   `python -m server --model default` in a subprocess (the real command line)
"""
from __future__ import annotations

from pathlib import Path

import pytest
from openai import AsyncOpenAI, OpenAI

from tests.helpers.live_server import SubprocessServer, ThreadedServer

KEY = "sk-test-flag"
FILE_KEY = "sk-test-file"
MAX_REQUEST_BYTES = 64 * 1024
PING_S = 0.1


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def tiny_server(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> ThreadedServer:
    from server.settings import Settings

    key_file = Path(tmp_path_factory.mktemp("keys")) / "keys.txt"
    key_file.write_text(f"# one key per line\n{FILE_KEY}\n")
    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", api_key=[KEY], api_key_file=str(key_file),
                        max_request_bytes=MAX_REQUEST_BYTES, sse_ping_interval=PING_S, self_test="report",
                        max_num_seqs=8, kv_cache_memory="64MiB")
    with ThreadedServer(settings) as srv:
        yield srv


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def client(tiny_server: ThreadedServer) -> OpenAI:
    return OpenAI(base_url=tiny_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture
def aclient(tiny_server: ThreadedServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=tiny_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def default_server() -> SubprocessServer:
    with SubprocessServer(["--model", "default", "--max-model-len", "2048", "--max-num-seqs", "8"]) as srv:
        yield srv


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def default_client(default_server: SubprocessServer) -> OpenAI:
    return OpenAI(base_url=default_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]

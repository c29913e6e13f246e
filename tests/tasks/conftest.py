"""Live servers for the task-endpoint tests (one per session: starting one costs seconds on 2 cores).

    tiny_task_server   uvicorn in a thread over a random 2-layer Llama with a 512-token context, so
                       a few thousand characters already need map-reduce; API key KEY
    task_client        the official openai SDK pointed at it (tasks are posted with client.post)
    default_task_server  `python -m server --model default` in a subprocess, for length control
"""
from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.helpers.live_server import SubprocessServer, ThreadedServer

KEY = "sk-tasks-test"
TINY_CONTEXT = 512
# A random model with tied embeddings greedily echoes its last prompt token ("\n\n\n..."); a strong
# repetition penalty keeps the output deterministic at temperature 0 but varied, so the texts the
# tests compare are not empty. (frequency/presence penalties would do too, at 5x the step time.)
VARIED = {"temperature": 0, "repetition_penalty": 3.0}


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def tiny_task_server(tiny_llama_dir: str) -> ThreadedServer:
    from server.settings import Settings

    # max_num_seqs 64: map-reduce of a 200,000-character text runs hundreds of short generations
    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", api_key=[KEY], self_test="off",
                        max_model_len=TINY_CONTEXT, max_num_seqs=64, max_num_batched_tokens=2048,
                        kv_cache_memory="64MiB", sse_ping_interval=0.5)
    with ThreadedServer(settings) as srv:
        yield srv


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def task_client(tiny_task_server: ThreadedServer) -> OpenAI:
    return OpenAI(base_url=tiny_task_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def default_task_server() -> SubprocessServer:
    with SubprocessServer(["--model", "default", "--max-model-len", "2048", "--max-num-seqs", "8",
                           "--self-test", "off"]) as srv:
        yield srv


def post(client: OpenAI, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A task request through the SDK's generic post; errors raise openai.APIStatusError subclasses."""
    return client.post(path, cast_to=object, body=body)


def stream(client: OpenAI, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """All events of a streamed task request (the SDK stops at [DONE] and raises on an error event)."""
    events = client.post(path, cast_to=object, body={**body, "stream": True}, stream=True,
                         stream_cls=openai.Stream[object])
    return list(events)


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events)

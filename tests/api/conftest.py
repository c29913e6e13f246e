"""One live server on the default model (SmolLM2-135M-Instruct) for every test of tests/api, and the
official clients pointed at it.

    api_server        `python -m server --model default` (subprocess) with API key KEY
    oai / anth        the openai and anthropic SDKs (retries off); anth sends the key as x-api-key
    http              an httpx client with the Bearer key, for the vLLM-shaped routes and raw bodies
"""
from __future__ import annotations

import anthropic
import httpx
import pytest
from openai import OpenAI

from tests.helpers.live_server import SubprocessServer

KEY = "sk-api-test"
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def api_server() -> SubprocessServer:
    args = ["--model", "default", "--max-model-len", "2048", "--max-num-seqs", "8", "--api-key", KEY,
            "--self-test", "off"]
    with SubprocessServer(args) as srv:
        yield srv


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def oai(api_server: SubprocessServer) -> OpenAI:
    return OpenAI(base_url=api_server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def anth(api_server: SubprocessServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api_server.base_url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="package")  # stopped after this package: servers do not pile up
def http(api_server: SubprocessServer) -> httpx.Client:
    with httpx.Client(base_url=api_server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        yield c


WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

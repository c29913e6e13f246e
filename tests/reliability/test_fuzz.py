"""Schemathesis against the live server's own OpenAPI schema: valid and invalid requests for every
operation. Whatever it sends, the answer is never a 5xx, every error body (and every error event of a
stream) has the OpenAI shape, and the server is healthy and idle afterwards.

    .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s      # CI: ~785 cases, fixed seed
    .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s -m slow     # 5x as many, random seed
    GLMSERVE_FUZZ_SCALE=20 .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s -m slow
"""
from __future__ import annotations

import os
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.conftest import MAX_MODEL_LEN
from tests.reliability.support import AUTH, openai_error, parse_sse, wait_engine_idle

# Generation is what costs: a max_tokens the context allows is cut to this, so a case decodes a few
# tokens. Values the server must reject (< 1, > the context, wrong types) pass through untouched.
FUZZ_MAX_TOKENS = 4
GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/summarize", "/v1/translate")
# examples per (operation, mode); operations without inputs produce one case whatever this says
CI_EXAMPLES = {"POST /v1/chat/completions": 170, "POST /v1/completions": 170, "GET /v1/models/{model_id}": 60}
OTHER_EXAMPLES = 10
STATUSES: dict[int, int] = {}  # status -> count, printed for the record


def cap_max_tokens(body: Any) -> None:
    if not isinstance(body, dict):
        return
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and FUZZ_MAX_TOKENS < value <= MAX_MODEL_LEN:
            body[name] = FUZZ_MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = FUZZ_MAX_TOKENS  # chat's default is "the rest of the context"


def check_response(label: str, resp: Any) -> None:
    """`resp` is schemathesis' Response: lower-case header names, each with a list of values."""
    where = f"{label}: {resp.status_code} {resp.content[:300]!r}"
    assert resp.status_code < 500, where
    ctype = (resp.headers.get("content-type") or [""])[0]
    if resp.status_code >= 400:
        assert ctype.startswith("application/json"), where
        openai_error(resp.json())
    elif ctype.startswith("text/event-stream"):
        stream = parse_sse(resp.status_code, resp.content.decode())
        # schemathesis stops reading after 20 events (a client leaving mid-stream); otherwise [DONE] ends it
        assert stream.done or resp.stream_cut_short, where
        for event in stream.errors:  # an error after the stream started: OpenAI shape, never ours to blame
            assert openai_error(event)["type"] != "server_error", where


def fuzz_operation(base_url: str, operation: Any, mode: GenerationMode, examples: int, derandomize: bool) -> int:
    """Runs up to `examples` generated cases of one operation; returns how many were sent."""
    session = requests.Session()  # keep-alive: one connection for all cases
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal sent
        if operation.path in GENERATING:
            if operation.path in ("/v1/chat/completions", "/v1/completions"):  # tasks have no max_tokens
                cap_max_tokens(case.body)
            if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # a random name stops at the 404 and tests nothing else
        resp = case.call(base_url=base_url, session=session, headers=AUTH, timeout=60)
        sent += 1
        STATUSES[resp.status_code] = STATUSES.get(resp.status_code, 0) + 1
        check_response(f"{operation.method.upper()} {operation.path} ({mode}) body={str(case.body)[:300]!r}", resp)

    try:
        run()
    except Unsatisfiable:
        pass  # no invalid input exists for this operation (e.g. GET /health takes none)
    return sent


def fuzz_all(base_url: str, scale: float, derandomize: bool) -> dict[str, int]:
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        examples = int(CI_EXAMPLES.get(label, OTHER_EXAMPLES) * scale)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent[f"{label} {mode}"] = fuzz_operation(base_url, operation, mode, examples, derandomize)
    return sent


def test_fuzzed_requests_get_no_5xx_and_openai_errors(rel_server) -> None:
    sent = fuzz_all(rel_server.base_url, scale=1.0, derandomize=True)  # CI: the same cases every run
    total = sum(sent.values())
    print(f"schemathesis sent {total} cases: {sent}; statuses {STATUSES}")
    assert total >= 500, sent
    wait_engine_idle(rel_server.base_url)
    assert "Traceback" not in rel_server.logs()


@pytest.mark.slow
def test_fuzzed_requests_long_run(rel_server) -> None:
    sent = fuzz_all(rel_server.base_url, scale=float(os.environ.get("GLMSERVE_FUZZ_SCALE", "5")), derandomize=False)
    print(f"schemathesis sent {sum(sent.values())} cases: {sent}; statuses {STATUSES}")
    wait_engine_idle(rel_server.base_url)
    assert "Traceback" not in rel_server.logs()

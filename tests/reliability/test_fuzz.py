"""Schemathesis against the live server's own OpenAPI schema: valid and invalid requests for every
operation. Whatever it sends, the answer is never a 5xx, every error body (and every error event of a
stream) has the route's shape (OpenAI's; Anthropic's on /v1/messages), and the server is healthy and
idle afterwards.

    .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s      # CI: ~785 cases, fixed seed
    .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s -m slow     # 5x as many, random seed
    GLMSERVE_FUZZ_SCALE=20 .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q -s -m slow
"""
from __future__ import annotations

import json
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
GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/summarize", "/v1/translate", "/v1/responses",
              "/v1/messages")
# operations whose `model` a positive case sets to the served one (a random name stops at the 404)
NAMES_MODEL = (*GENERATING, "/v1/embeddings", "/v1/messages/count_tokens", "/tokenize", "/detokenize")
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# streams framed with event names, and the event that ends each (no [DONE] line)
NAMED_STREAMS = {"/v1/responses": "response.completed", "/v1/messages": "message_stop"}
# examples per (operation, mode); operations without inputs produce one case whatever this says
CI_EXAMPLES = {"POST /v1/chat/completions": 170, "POST /v1/completions": 170, "GET /v1/models/{model_id}": 60,
               "POST /v1/responses": 40, "POST /v1/messages": 40, "POST /v1/embeddings": 30}
OTHER_EXAMPLES = 10
STATUSES: dict[int, int] = {}  # status -> count, printed for the record


def cap_max_tokens(body: Any, default_limit: str = "max_tokens") -> None:
    if not isinstance(body, dict):
        return
    for name in TOKEN_LIMITS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and FUZZ_MAX_TOKENS < value <= MAX_MODEL_LEN:
            body[name] = FUZZ_MAX_TOKENS
    if not any(name in body for name in TOKEN_LIMITS):
        body[default_limit] = FUZZ_MAX_TOKENS  # chat's default is "the rest of the context"


def anthropic_error(body: Any) -> dict[str, Any]:
    """The `error` object of an Anthropic error body: {"type": "error", "error": {"type", "message"}}."""
    assert isinstance(body, dict) and body.get("type") == "error" and set(body) == {"type", "error"}, body
    err = body["error"]
    assert set(err) == {"type", "message"} and all(isinstance(err[k], str) and err[k] for k in err), err
    return err


def check_named_stream(path: str, where: str, resp: Any) -> None:
    events = [json.loads(line[6:]) for line in resp.content.decode().splitlines() if line.startswith("data: ")]
    assert resp.stream_cut_short or (events and events[-1]["type"] in (NAMED_STREAMS[path], "error")), where
    for event in events:
        if event.get("type") == "error":  # an error after the stream started: never ours to blame
            err = anthropic_error(event) if path == "/v1/messages" else openai_error({"error": event["error"]})
            assert err["type"] not in ("server_error", "api_error"), where


def check_response(label: str, resp: Any, path: str = "") -> None:
    """`resp` is schemathesis' Response: lower-case header names, each with a list of values."""
    where = f"{label}: {resp.status_code} {resp.content[:300]!r}"
    assert resp.status_code < 500, where
    ctype = (resp.headers.get("content-type") or [""])[0]
    if resp.status_code >= 400:
        assert ctype.startswith("application/json"), where
        anthropic_error(resp.json()) if path.startswith("/v1/messages") else openai_error(resp.json())
    elif ctype.startswith("text/event-stream") and path in NAMED_STREAMS:
        check_named_stream(path, where, resp)
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
            if operation.path in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):  # tasks have none
                cap_max_tokens(case.body)
            elif operation.path == "/v1/responses":
                cap_max_tokens(case.body, "max_output_tokens")
        if operation.path in NAMES_MODEL and mode == GenerationMode.POSITIVE and isinstance(case.body, dict) \
                and "model" in case.body:
            case.body["model"] = "tiny"  # a random name stops at the 404 and tests nothing else
        resp = case.call(base_url=base_url, session=session, headers=AUTH, timeout=60)
        sent += 1
        STATUSES[resp.status_code] = STATUSES.get(resp.status_code, 0) + 1
        check_response(f"{operation.method.upper()} {operation.path} ({mode}) body={str(case.body)[:300]!r}", resp,
                       operation.path)

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

"""Security: every /v1 route (enumerated from the live OpenAPI schema) and every stream needs the API
key; keys and prompts never reach the log by default; request and response sizes are bounded; CORS is
off unless configured; the container runs as a non-root user; the test-only fault route does not
exist unless switched on. The threat model is docs/SECURITY.md.

    .venv/bin/python -m pytest tests/reliability/test_security.py -q
"""
from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers.live_server import REPO_ROOT, ThreadedServer
from tests.reliability.support import AUTH, KEY, assert_openai_error, ready, user

WRONG_KEY = "sk-wrong-" + uuid.uuid4().hex
PROMPT_MARKER = "confidential-prompt-" + uuid.uuid4().hex
# a body each POST route accepts once authenticated (routes added later fall back to {})
VALID_BODIES = {
    "/v1/chat/completions": {"model": "tiny", "messages": user("hi"), "max_tokens": 2},
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2},
    "/v1/summarize": {"model": "tiny", "text": "A short text to sum up.", "max_length": 5},
    "/v1/translate": {"model": "tiny", "text": "Hello.", "target_lang": "fr"},
    "/v1/responses": {"model": "tiny", "input": "hi", "max_output_tokens": 2},
    "/v1/messages": {"model": "tiny", "max_tokens": 2, "messages": user("hi")},
    "/v1/messages/count_tokens": {"model": "tiny", "messages": user("hi")},
    "/v1/embeddings": {"model": "tiny", "input": "hi"},
}
# Anthropic's routes answer in Anthropic's error shape and also take the key as `x-api-key`, as its SDK sends it
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
STREAMLESS = ("/v1/messages/count_tokens", "/v1/embeddings", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")
# adapter admin routes need an adapter directory: authenticated, a body without one is a 4xx of its own
LORA_ADMIN = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


def v1_operations(base_url: str) -> list[tuple[str, str]]:
    paths = httpx.get(base_url + "/openapi.json").json()["paths"]
    ops = [(method.upper(), path.replace("{model_id}", "tiny")) for path, item in paths.items()
           if path.startswith("/v1") for method in item]
    assert ("POST", "/v1/chat/completions") in ops and ("GET", "/v1/models") in ops
    return ops


def call(base_url: str, method: str, path: str, headers: dict[str, str], stream: bool = False) -> httpx.Response:
    body = {**VALID_BODIES.get(path, {}), **({"stream": True} if stream else {})} if method == "POST" else None
    return httpx.request(method, base_url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {WRONG_KEY}"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"X-API-Key": KEY}],
                         ids=["no_key", "wrong_key", "no_scheme", "basic_scheme", "other_header"])
def test_every_v1_route_and_stream_needs_the_key(rel_server, headers: dict[str, str]) -> None:
    for method, path in v1_operations(rel_server.base_url):
        if path in ANTHROPIC_PATHS and "X-API-Key" in headers:
            continue  # the right key in x-api-key is accepted there (test below)
        for stream in ([False, True] if method == "POST" and path not in STREAMLESS else [False]):
            resp = call(rel_server.base_url, method, path, headers, stream)
            if path in ANTHROPIC_PATHS:  # JSON in Anthropic's shape, not an event stream
                assert resp.status_code == 401 and resp.headers["content-type"].startswith("application/json")
                body = resp.json()
                assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
            else:
                err = assert_openai_error(resp, 401)  # JSON, not an event stream, even when stream is true
                assert err["type"] == "authentication_error" and resp.headers["www-authenticate"] == "Bearer"
            assert WRONG_KEY not in resp.text and KEY not in resp.text


def test_every_v1_route_and_stream_works_with_the_key(rel_server) -> None:
    for method, path in v1_operations(rel_server.base_url):
        for stream in ([False, True] if method == "POST" and path not in STREAMLESS else [False]):
            resp = call(rel_server.base_url, method, path, AUTH, stream)
            if path in LORA_ADMIN:
                assert 400 <= resp.status_code < 500 and resp.status_code not in (401, 403), resp.text[:300]
                continue
            assert resp.status_code == 200, (method, path, stream, resp.text[:300])
    for path in ANTHROPIC_PATHS:
        resp = call(rel_server.base_url, "POST", path, {"X-API-Key": KEY})
        assert resp.status_code == 200, (path, resp.text[:300])


def test_key_in_the_query_string_is_not_accepted(rel_server) -> None:
    resp = httpx.get(rel_server.base_url + f"/v1/models?api_key={KEY}")
    assert_openai_error(resp, 401)


def test_keys_and_prompts_never_reach_the_log(rel_server) -> None:
    request_id = "sec-" + uuid.uuid4().hex
    body = {"model": "tiny", "messages": user(PROMPT_MARKER), "max_tokens": 2}
    url = rel_server.base_url + "/v1/chat/completions"
    assert httpx.post(url, json=body, headers={**AUTH, "X-Request-ID": request_id}, timeout=60).status_code == 200
    assert httpx.post(url, json={**body, "stream": True}, headers=AUTH, timeout=60).status_code == 200
    assert httpx.post(url, json={**body, "temperature": 9}, headers=AUTH, timeout=60).status_code == 400
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
    completion = {"model": "tiny", "prompt": PROMPT_MARKER, "max_tokens": 2}
    assert httpx.post(rel_server.base_url + "/v1/completions", json=completion, headers=AUTH).status_code == 200
    logs = rel_server.logs()
    assert request_id in logs  # the request lines are there, so their absence below means something
    for secret in (KEY, WRONG_KEY, PROMPT_MARKER):
        assert secret not in logs


def test_request_body_limit_holds_without_content_length(rel_server) -> None:
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"a" * (1024 * 1024)  # 6 MiB > the default 4 MiB limit, with no Content-Length to trust
        yield b'"}]}'

    resp = httpx.post(rel_server.base_url + "/v1/chat/completions", content=chunks(), timeout=60,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert assert_openai_error(resp, 413)["code"] == "request_too_large"


def test_oversized_headers_are_refused_and_the_server_lives_on(rel_server) -> None:
    """h11 caps the request head (64 KiB); httptools would have buffered any amount of header."""
    with socket.create_connection(("127.0.0.1", rel_server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 64 MiB; the server gives up long before
                sock.sendall(b"a" * (1024 * 1024))
            answer = sock.recv(200)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    assert ready(rel_server.base_url).status_code == 200


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": user("hi"), "n": 17}, "n"),
    ("/v1/chat/completions", {"messages": user("hi"), "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": ["hi"] * 17, "n": 16}, "prompt"),  # 272 choices > 256
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10 ** 6}, "max_tokens"),
], ids=["n", "top_logprobs", "choices", "max_tokens"])
def test_response_size_is_bounded(rel_server, path: str, body: dict, param: str) -> None:
    resp = httpx.post(rel_server.base_url + path, json={"model": "tiny", **body}, headers=AUTH, timeout=60)
    assert assert_openai_error(resp, 400)["param"] == param


def test_cors_is_off_by_default(rel_server) -> None:
    evil = {"Origin": "https://evil.example"}
    preflight = httpx.options(rel_server.base_url + "/v1/chat/completions",
                              headers={**evil, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "authorization"})
    plain = httpx.get(rel_server.base_url + "/v1/models", headers={**AUTH, **evil})
    for resp in (preflight, plain):
        assert not any(h.startswith("access-control-") for h in resp.headers), resp.headers


def test_cors_allows_only_the_configured_origin(tiny_llama_dir: str) -> None:
    from server.settings import Settings

    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", api_key=[KEY], self_test="off",
                        cors_origins=["https://app.example"], max_model_len=128, kv_cache_memory="8MiB")
    with ThreadedServer(settings) as srv:
        url = srv.base_url + "/v1/chat/completions"
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        good = httpx.options(url, headers={"Origin": "https://app.example", **pre})
        bad = httpx.options(url, headers={"Origin": "https://evil.example", **pre})
        assert good.status_code == 200 and good.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in bad.headers
        # the real request still needs the key; the 401 carries CORS headers so the page can read it
        denied = httpx.post(url, json=VALID_BODIES["/v1/chat/completions"], headers={"Origin": "https://app.example"})
        assert_openai_error(denied, 401)
        assert denied.headers["access-control-allow-origin"] == "https://app.example"


def test_fault_injection_route_is_absent_by_default(rel_server) -> None:
    resp = httpx.post(rel_server.base_url + "/_test/faults/kill-engine")
    assert resp.status_code in (404, 405)
    assert ready(rel_server.base_url).status_code == 200
    assert "/_test" not in json.dumps(httpx.get(rel_server.base_url + "/openapi.json").json()["paths"])


def final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM\s", dockerfile, flags=re.M)[-1]


def test_container_runs_as_non_root() -> None:
    stage = final_stage((REPO_ROOT / "Dockerfile").read_text())
    users = re.findall(r"^USER\s+(\S+)", stage, re.M)
    assert users, "the final stage sets no USER: the container would run as root"
    name, _, group = users[-1].partition(":")
    assert name not in ("root", "0") and group not in ("root", "0")
    assert stage.index("USER") < stage.index("CMD")  # the server process itself is unprivileged
    for manifest in Path(REPO_ROOT / "deploy" / "k8s").glob("*.yaml"):
        text = manifest.read_text()
        if re.search(r"^kind: (Deployment|StatefulSet)$", text, re.M):
            assert "runAsNonRoot: true" in text, manifest

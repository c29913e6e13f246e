"""Every error path: OpenAI error bodies with the right status (400, 401, 404, 413) and the
context-length rules (reject, 400 for max_tokens alone, clamp with a header)."""
from __future__ import annotations

import httpx
import pytest
from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

from server.serving.admission import CLAMP_HEADER
from tests.server.conftest import FILE_KEY, KEY, MAX_REQUEST_BYTES, user

MSG = user("hi")


def _post(srv, body: object, key: str | None = KEY, path: str = "/v1/chat/completions", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if not isinstance(body, (dict, list)):  # raw bytes or a generator (chunked upload)
        return httpx.post(srv.base_url + path, content=body, headers=headers, timeout=60, **kw)
    return httpx.post(srv.base_url + path, json=body, headers=headers, timeout=60, **kw)


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("key", [None, "sk-wrong", KEY + "x"])
def test_missing_or_wrong_key_is_401(tiny_server, key: str | None) -> None:
    resp = _post(tiny_server, {"messages": MSG, "max_tokens": 1}, key=key)
    assert resp.status_code == 401 and _error(resp)["code"] == "invalid_api_key"
    assert resp.headers["www-authenticate"] == "Bearer"


def test_sdk_raises_authentication_error_on_streams_too(tiny_server) -> None:
    bad = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=MSG, max_tokens=1, stream=True)
    with pytest.raises(AuthenticationError):
        bad.models.list()


def test_key_from_key_file_is_accepted(tiny_server) -> None:
    assert _post(tiny_server, {"messages": MSG, "max_tokens": 1}, key=FILE_KEY).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_and_metrics_need_no_key(tiny_server, path: str) -> None:
    assert httpx.get(tiny_server.base_url + path).status_code == 200


def test_invalid_json_is_400(tiny_server) -> None:
    resp = _post(tiny_server, b"{not json")
    assert resp.status_code == 400 and _error(resp)["code"] == "invalid_json"


def test_missing_field_is_400_naming_it(tiny_server) -> None:
    resp = _post(tiny_server, {"model": "tiny"})
    assert resp.status_code == 400 and _error(resp)["param"] == "messages"


def test_top_logprobs_without_logprobs_is_400(tiny_server) -> None:
    resp = _post(tiny_server, {"messages": MSG, "top_logprobs": 2})
    assert resp.status_code == 400 and "logprobs" in _error(resp)["message"]


def test_stream_options_without_stream_is_400(tiny_server) -> None:
    resp = _post(tiny_server, {"messages": MSG, "stream_options": {"include_usage": True}})
    assert resp.status_code == 400 and "stream_options" in _error(resp)["message"]


def test_bad_role_order_is_400(tiny_server) -> None:
    resp = _post(tiny_server, {"messages": [{"role": "wizard", "content": "x"}]})
    assert resp.status_code == 400 and _error(resp)["param"].startswith("messages")


def test_unknown_model_is_404(client: OpenAI, tiny_server) -> None:
    with pytest.raises(NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=MSG, max_tokens=1)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-9")


def test_models_list_and_retrieve(client: OpenAI) -> None:
    [card] = client.models.list().data
    assert card.id == "tiny" and card.object == "model" and card.owned_by == "glmserve"
    assert card.model_extra["max_model_len"] == 1024
    assert client.models.retrieve("tiny").id == "tiny"


def test_unknown_route_is_404_json(tiny_server) -> None:
    resp = _post(tiny_server, {}, path="/v1/nothing")
    assert resp.status_code in (404, 405) and _error(resp)


def test_body_over_the_limit_is_413(tiny_server) -> None:
    resp = _post(tiny_server, {"messages": user("x" * MAX_REQUEST_BYTES)})
    assert resp.status_code == 413 and _error(resp)["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(tiny_server) -> None:
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_REQUEST_BYTES // 1024 + 1):
            yield b"y" * 1024
        yield b'"}]}'

    resp = _post(tiny_server, chunks())
    assert resp.status_code == 413


def test_prompt_over_the_context_is_context_length_exceeded(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=user("word " * 1100), max_tokens=1)
    body = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "1024" in body["message"]


def test_max_tokens_over_the_context_is_400(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5000)
    assert err.value.body["param"] == "max_tokens" and "1024" in err.value.body["message"]


def test_max_tokens_overflowing_with_the_prompt_is_clamped_and_said(client: OpenAI) -> None:
    messages = user("word " * 990)
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=messages, max_tokens=500,
                                                           extra_body={"ignore_eos": True})
    resp = raw.parse()
    room = 1024 - resp.usage.prompt_tokens
    assert 0 < room < 500
    assert raw.headers[CLAMP_HEADER] == str(room)
    assert resp.usage.completion_tokens == room and resp.choices[0].finish_reason == "length"


def test_fitting_max_tokens_has_no_clamp_header(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MSG, max_tokens=2)
    assert CLAMP_HEADER not in raw.headers


def test_request_id_is_echoed_or_generated(tiny_server) -> None:
    resp = httpx.post(tiny_server.base_url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1},
                      headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "trace-abc.123"}, timeout=60)
    assert resp.headers["x-request-id"] == "trace-abc.123"
    generated = _post(tiny_server, {"messages": MSG, "max_tokens": 1}).headers["x-request-id"]
    assert len(generated) == 32 and generated != "trace-abc.123"

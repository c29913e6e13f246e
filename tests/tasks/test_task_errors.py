"""Every invalid task request is a 400 (401, 404) in the OpenAI error format, before any work."""
from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.tasks.conftest import KEY, post

SUMMARIZE_400 = [
    ({"text": ""}, "text"),
    ({"text": "   \n\n "}, "text"),
    ({"text": "Hello.", "max_length": 0}, "max_length"),
    ({"text": "Hello.", "max_length": -5}, "max_length"),
    ({"text": "Hello.", "max_length": "long"}, "max_length"),
    ({"text": "Hello.", "language": "xx"}, "language"),
    ({"text": "Hello.", "style": "poem"}, "style"),
    ({"text": "Hello.", "length_unit": "lines"}, "length_unit"),
    ({"text": 123}, "text"),
    ({"text": ["a", "b"]}, "text"),
    ({}, "text"),
    ({"text": "Hello.", "temperature": 5}, "temperature"),
]
TRANSLATE_400 = [
    ({"text": "", "target_lang": "en"}, "text"),
    ({"text": "你好", "target_lang": "klingon"}, "target_lang"),
    ({"text": "你好", "target_lang": "en", "source_lang": "zz"}, "source_lang"),
    ({"text": "你好"}, "target_lang"),
    ({"text": "你好", "target_lang": 7}, "target_lang"),
    ({"text": "你好", "target_lang": "en", "glossary": ["a"]}, "glossary"),
    ({"text": "你好", "target_lang": "en", "glossary": {"": "x"}}, "glossary"),
    ({"text": "你好", "target_lang": "en", "top_p": 0}, "top_p"),
]


def check_openai_error(body: dict, status: int) -> dict:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}[status]
    return error


@pytest.mark.parametrize("path, body, param", [("/summarize", b, p) for b, p in SUMMARIZE_400] +
                         [("/translate", b, p) for b, p in TRANSLATE_400])
def test_invalid_request_is_a_400_naming_the_field(task_client: OpenAI, path: str, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        post(task_client, path, body)
    error = check_openai_error(info.value.response.json(), 400)
    assert error["param"] is not None and error["param"].startswith(param), error


@pytest.mark.parametrize("path", ["/summarize", "/translate"])
def test_invalid_streamed_request_fails_before_the_stream(tiny_task_server, path: str) -> None:
    response = httpx.post(f"{tiny_task_server.base_url}/v1{path}", json={"text": "", "target_lang": "en", "stream": True},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 400
    assert check_openai_error(response.json(), 400)["param"] == "text"


def test_unknown_model_is_a_404(task_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        post(task_client, "/summarize", {"text": "Hello.", "model": "gpt-nonexistent"})
    assert check_openai_error(info.value.response.json(), 404)["param"] == "model"


@pytest.mark.parametrize("path", ["/summarize", "/translate"])
def test_api_key_is_required(tiny_task_server, path: str) -> None:
    url = f"{tiny_task_server.base_url}/v1{path}"
    body = {"text": "Hello.", "target_lang": "fr"}
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
    assert wrong.status_code == 401
    check_openai_error(wrong.json(), 401)

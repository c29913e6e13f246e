"""POST /tokenize and /detokenize (vLLM's shapes) on the default model: a prompt's ids, chat messages'
ids equal to the prompt_tokens a chat completion reports, the round trip, and 400s."""
from __future__ import annotations

import pytest

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi there!"}]


def test_prompt_round_trip(http) -> None:
    out = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert out["count"] == len(out["tokens"]) > 0 and out["max_model_len"] == 2048
    assert "".join(out["token_strs"]).endswith("Hello world")
    back = http.post("/detokenize", json={"tokens": out["tokens"]}).json()
    assert back["prompt"].endswith("Hello world")


def test_messages_count_equals_a_chat_completions_prompt_tokens(http, oai) -> None:
    out = http.post("/tokenize", json={"messages": MESSAGES}).json()
    chat = oai.chat.completions.create(model="default", messages=MESSAGES, max_tokens=1)
    assert out["count"] == chat.usage.prompt_tokens
    without_prompt = http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert without_prompt["count"] < out["count"]


@pytest.mark.parametrize("path, body", [
    ("/tokenize", {}), ("/tokenize", {"prompt": "a", "messages": MESSAGES}), ("/tokenize", {"prompt": 5}),
    ("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": "abc"}),
    ("/tokenize", {"prompt": "a", "model": "nope"}),
])
def test_bad_input_is_a_4xx_in_openai_shape(http, path, body) -> None:
    resp = http.post(path, json=body)
    assert 400 <= resp.status_code < 500
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_key_is_required(api_server) -> None:
    import httpx

    assert httpx.post(api_server.base_url + "/tokenize", json={"prompt": "a"}).status_code == 401

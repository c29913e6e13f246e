"""POST /v1/completions: text_completion fields, logprobs (int), echo, batched and token-id prompts."""
from __future__ import annotations

import pytest
from openai import BadRequestError, OpenAI


def test_text_completion_carries_every_field(client: OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    body, resp = raw.http_response.json(), raw.parse()
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion" and resp.model == "tiny"
    assert resp.system_fingerprint.startswith("fp_") and resp.created > 0
    [choice] = resp.choices
    assert choice.index == 0 and isinstance(choice.text, str) and choice.logprobs is None
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert "cached_tokens" in body["usage"]["prompt_tokens_details"] and "timings" in body


def test_default_max_tokens_is_sixteen(client: OpenAI) -> None:
    resp = client.completions.create(model="tiny", prompt="Hello", extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 16 and resp.choices[0].finish_reason == "length"


def test_logprobs_int_gives_parallel_arrays(client: OpenAI) -> None:
    resp = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, logprobs=2,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(len(top) <= 2 and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == resp.choices[0].text


def test_echo_prepends_the_prompt(client: OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt="Echo this", max_tokens=3, temperature=0)
    echoed = client.completions.create(model="tiny", prompt="Echo this", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == "Echo this" + plain.choices[0].text


def test_batched_prompts_number_choices_prompt_major(client: OpenAI) -> None:
    resp = client.completions.create(model="tiny", prompt=["First", "Second prompt"], max_tokens=2, n=2,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    alone = client.completions.create(model="tiny", prompt="Second prompt", max_tokens=2, temperature=0)
    assert resp.choices[2].text == resp.choices[3].text == alone.choices[0].text
    assert resp.usage.completion_tokens == 8


def test_token_id_prompt_equals_text_prompt(client: OpenAI, tiny_server) -> None:
    ids = tiny_server.engine.tokenizer.encode("Token ids work too")
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0)
    by_text = client.completions.create(model="tiny", prompt="Token ids work too", max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("kwargs,param", [
    ({"best_of": 3, "n": 1}, None), ({"suffix": "end"}, None), ({"echo": True, "logprobs": 1}, "echo"),
    ({"prompt": [10 ** 8]}, "prompt"), ({"prompt": []}, None), ({"logprobs": 50}, "logprobs"),
])
def test_unsupported_or_invalid_completion_options_are_400(client: OpenAI, kwargs: dict, param: str | None) -> None:
    args = {"model": "tiny", "prompt": "x", "max_tokens": 2, **kwargs}
    with pytest.raises(BadRequestError) as err:
        client.completions.create(**args)
    assert err.value.body["param"] == param

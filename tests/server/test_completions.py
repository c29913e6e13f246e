"""POST /v1/completions: text_completion fields, logprobs (int), echo, batched and token-id prompts."""
from __future__ import annotations

import pytest
import torch
from openai import BadRequestError, OpenAI

from tests.server.conftest import KEY
from tests.server.sse_util import post_stream


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
    # top 2 plus the chosen token when it is not among them (OpenAI: "up to logprobs+1 elements")
    assert all(2 <= len(top) <= 3 and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == resp.choices[0].text


def test_echo_prepends_the_prompt(client: OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt="Echo this", max_tokens=3, temperature=0)
    echoed = client.completions.create(model="tiny", prompt="Echo this", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == "Echo this" + plain.choices[0].text


@pytest.fixture(scope="module")
def hf_tiny(tiny_llama_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def _reference_scores(hf, ids: list[int]) -> list[float]:
    """log P(token i | tokens < i) for i >= 1, from transformers."""
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]


PROMPT = "The quick brown fox jumps over the lazy dog. 你好，世界"


def test_echo_with_logprobs_scores_the_prompt(client: OpenAI, tiny_server, hf_tiny) -> None:
    """lm-eval-harness's loglikelihood request: echo the prompt with logprobs and read its tokens' scores."""
    ids = tiny_server.engine.tokenizer.encode(PROMPT)
    resp = client.completions.create(model="tiny", prompt=PROMPT, echo=True, logprobs=1, max_tokens=1,
                                     temperature=0, extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT) and len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(_reference_scores(hf_tiny, ids), abs=1e-3)
    assert all(lp.tokens[i] in lp.top_logprobs[i] and len(lp.top_logprobs[i]) <= 2 for i in range(1, len(ids)))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[len(ids)] == len(PROMPT)
    assert choice.prompt_logprobs is None  # vLLM's field only when asked for by name

    # the same, streamed: the echo arrives with its scores, then the generated token
    events = post_stream(tiny_server.base_url, "/v1/completions",
                         {"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 1,
                          "temperature": 0, "ignore_eos": True}, KEY).events
    streamed = [c for e in events for c in e["choices"] if c.get("logprobs")]
    assert "".join(c["text"] for c in streamed) == choice.text
    assert [t for c in streamed for t in c["logprobs"]["token_logprobs"]] == lp.token_logprobs


def test_max_tokens_zero_only_scores_the_prompt(client: OpenAI, tiny_server, hf_tiny) -> None:
    """`max_tokens: 0` with echo and logprobs: the prompt's scores and nothing generated (a common
    perplexity-scoring request); without a scoring request 0 stays an error."""
    ids = tiny_server.engine.tokenizer.encode(PROMPT)
    resp = client.completions.create(model="tiny", prompt=[PROMPT, "Second"], echo=True, logprobs=0, max_tokens=0)
    first = resp.choices[0]
    assert first.text == PROMPT and first.finish_reason == "length" and len(first.logprobs.tokens) == len(ids)
    assert first.logprobs.token_logprobs[1:] == pytest.approx(_reference_scores(hf_tiny, ids), abs=1e-3)
    assert resp.choices[1].text == "Second" and resp.usage.completion_tokens == 0
    events = post_stream(tiny_server.base_url, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "echo": True,
                                                                   "logprobs": 0, "max_tokens": 0}, KEY).events
    choices = [c for e in events for c in e["choices"]]
    assert "".join(c["text"] for c in choices) == PROMPT and choices[-1]["finish_reason"] == "length"
    with pytest.raises(BadRequestError) as err:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0)
    assert err.value.body["param"] == "max_tokens" and "echo" in err.value.body["message"]


def test_prompt_scores_per_request_are_bounded(client: OpenAI) -> None:
    """Scores multiply the response (tokens x alternatives x choices): past the cap, a clear 400."""
    from server.serving.openai.completions import MAX_PROMPT_SCORES_PER_REQUEST

    prompts = ["word " * 1000] * 10  # ~10,000 prompt tokens x 21 entries x n=8 > 1,000,000 (in a 50 KB body)
    with pytest.raises(BadRequestError) as err:
        client.completions.create(model="tiny", prompt=prompts, echo=True, logprobs=20, max_tokens=0, n=8)
    assert err.value.body["code"] == "too_many_logprobs" and err.value.body["param"] == "logprobs"
    assert str(MAX_PROMPT_SCORES_PER_REQUEST) in err.value.body["message"]


def test_prompt_logprobs_in_vllm_format(client: OpenAI, tiny_server, hf_tiny) -> None:
    ids = tiny_server.engine.tokenizer.encode(PROMPT)
    raw = client.completions.with_raw_response.create(model="tiny", prompt=PROMPT, max_tokens=2, temperature=0,
                                                      extra_body={"prompt_logprobs": 2}).http_response.json()
    scored = raw["choices"][0]["prompt_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None
    reference = _reference_scores(hf_tiny, ids)
    for pos in range(1, len(ids)):
        entry = scored[pos]
        assert entry[str(ids[pos])]["logprob"] == pytest.approx(reference[pos - 1], abs=1e-3)
        ranks = sorted(v["rank"] for v in entry.values())
        assert {1, 2} <= set(ranks) and 2 <= len(entry) <= 3
    chat = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=2,
        extra_body={"prompt_logprobs": 0}).http_response.json()
    prompt_len = chat["usage"]["prompt_tokens"]
    assert len(chat["prompt_logprobs"]) == prompt_len and chat["prompt_logprobs"][0] is None
    assert all(len(e) == 1 and next(iter(e.values()))["rank"] >= 1 for e in chat["prompt_logprobs"][1:])
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True,
                                       extra_body={"prompt_logprobs": 0})


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
    ({"best_of": 3, "n": 1}, None), ({"suffix": "end"}, None), ({"extra_body": {"prompt_logprobs": 21}}, "prompt_logprobs"),
    ({"prompt": [10 ** 8]}, "prompt"), ({"prompt": []}, None), ({"logprobs": 50}, "logprobs"),
])
def test_unsupported_or_invalid_completion_options_are_400(client: OpenAI, kwargs: dict, param: str | None) -> None:
    args = {"model": "tiny", "prompt": "x", "max_tokens": 2, **kwargs}
    with pytest.raises(BadRequestError) as err:
        client.completions.create(**args)
    assert err.value.body["param"] == param

"""Each GLM replica served as a user would: `glmserve serve --model DIR`, unchanged, then the openai SDK.

One server per replica (module-scoped, one at a time). Checked: chat works in Chinese, text round-trips
through the tokenizer endpoints, each of the family's stop tokens ends a turn, a forced tool call comes
back as `tool_calls` (the family's call format, forced by grammar), a text completion starts
with the tokenizer's prefix unless `add_special_tokens: false`, and greedy output equals transformers'
on the same weights (for model_type chatglm: transformers' Glm on the HF checkpoint the replica's
ChatGLM-layout tensors were renamed from).
"""
from __future__ import annotations

import httpx
import pytest
import torch
from openai import OpenAI

from model import ChatTemplate, Tokenizer
from tests.helpers import glm_replicas
from tests.helpers.live_server import SubprocessServer, ThreadedServer

# name -> (builder, how it is started, what the start-up log says about the tokenizer). ChatGLM3 goes
# through the real command line (`python -m server`); the others through the same build_app in a thread.
REPLICAS = {
    "chatglm3-6b": (glm_replicas.build_chatglm3_replica, "subprocess", "ChatGLM3 SentencePiece"),
    "glm-4-9b-chat": (glm_replicas.build_glm4_chat_replica, "thread", None),
    "glm-4-9b-chat-hf": (glm_replicas.build_glm4_chat_hf_replica, "thread", None),
    "GLM-4-9B-0414": (glm_replicas.build_glm4_0414_replica, "thread", None),
    "GLM-Z1-9B-0414": (glm_replicas.build_glm_z1_replica, "thread", None),
}
ASK = [{"role": "user", "content": "北京今天天气怎么样？请用中文回答 😀"}]
ROUND_TRIP = "你好，世界！  两个空格\n\n换行 and English 😀👩‍💻"
MAX_TOKENS = 12


@pytest.fixture(scope="module", params=list(REPLICAS))
def served(request, glm_replicas_root):
    build, how, logged = REPLICAS[request.param]
    path = build(glm_replicas_root / request.param)
    args = ["--model", path, "--served-model-name", "glm", "--max-num-seqs", "4", "--kv-cache-memory", str(16 << 20),
            "--self-test", "off"]
    if how == "subprocess":
        with SubprocessServer(args) as srv:
            if logged:
                assert logged in srv.logs()
            yield request.param, path, srv
        return
    from server.settings import Settings

    settings = Settings(model=path, served_model_name="glm", max_num_seqs=4, kv_cache_memory=16 << 20,
                        self_test="off")
    with ThreadedServer(settings) as srv:
        yield request.param, path, srv


@pytest.fixture(scope="module")
def tokenizer(served) -> Tokenizer:
    return Tokenizer(served[1])


def _client(srv) -> OpenAI:
    return OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _transformers_greedy(name: str, path: str, prompt: list[int], stop_ids: tuple[int, ...]) -> list[int]:
    from transformers import AutoModelForCausalLM

    source = glm_replicas.reference_hf_dir(path) if name in ("chatglm3-6b", "glm-4-9b-chat") else path
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False,
                          eos_token_id=list(stop_ids), pad_token_id=stop_ids[0])
    return out[0, len(prompt):].tolist()


def test_chat_in_chinese_through_the_openai_sdk(served, tokenizer) -> None:
    _, _, srv = served
    reply = _client(srv).chat.completions.create(model="glm", messages=ASK, max_tokens=MAX_TOKENS, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(ChatTemplate(tokenizer).encode(ASK))
    text = (choice.message.content or "") + (getattr(choice.message, "reasoning_content", None) or "")
    assert reply.usage.completion_tokens >= 1 and isinstance(text, str)


def test_greedy_output_equals_transformers(served, tokenizer) -> None:
    name, path, srv = served
    prompt = ChatTemplate(tokenizer).encode(ASK)
    expected = _transformers_greedy(name, path, prompt, tokenizer.eos_token_ids)
    got = _client(srv).completions.create(model="glm", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    stopped = expected[-1] in tokenizer.eos_token_ids
    assert got.choices[0].finish_reason == ("stop" if stopped else "length")
    assert got.usage.completion_tokens == len(expected)
    # random weights emit stray bytes: a stream never ends in half a character, so a broken tail is dropped
    assert got.choices[0].text == tokenizer.decode(expected[:-1] if stopped else expected).rstrip("\ufffd")


def test_each_stop_token_of_the_family_ends_a_turn(served, tokenizer) -> None:
    _, _, srv = served
    client = _client(srv)
    names = {tokenizer.token_to_str(i) for i in tokenizer.eos_token_ids}
    assert {"<|user|>", "<|observation|>"} <= names  # GLM ends a reply by opening the next turn
    for stop_id in tokenizer.eos_token_ids:
        reply = client.chat.completions.create(model="glm", messages=ASK, max_tokens=MAX_TOKENS, temperature=0,
                                               logit_bias={str(stop_id): 100})
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 1


def test_chinese_round_trips_through_the_tokenizer(served, tokenizer) -> None:
    _, _, srv = served
    tokens = httpx.post(srv.base_url + "/tokenize", json={"model": "glm", "prompt": ROUND_TRIP,
                                                          "add_special_tokens": False}, timeout=60).json()["tokens"]
    assert tokens == tokenizer.encode(ROUND_TRIP)
    text = httpx.post(srv.base_url + "/detokenize", json={"model": "glm", "tokens": tokens}, timeout=60).json()
    assert text["prompt"] == ROUND_TRIP


def test_text_completions_start_with_the_tokenizers_prefix(served, tokenizer) -> None:
    _, _, srv = served
    client = _client(srv)
    prefix = tokenizer.prefix_token_ids
    assert [tokenizer.token_to_str(i) for i in prefix] in (["[gMASK]", "sop"], ["[gMASK]", "<sop>"])
    body = dict(model="glm", prompt=ROUND_TRIP, max_tokens=1, temperature=0)
    with_prefix = client.completions.create(**body)
    without = client.completions.create(**body, extra_body={"add_special_tokens": False})
    plain = len(tokenizer.encode(ROUND_TRIP))
    assert (with_prefix.usage.prompt_tokens, without.usage.prompt_tokens) == (plain + len(prefix), plain)


def test_forced_tool_call_comes_back_as_tool_calls(served) -> None:
    from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL, assert_forced_call

    name, _, srv = served
    tools = [WEATHER_TOOL, TIME_TOOL]
    # Z1's generation prompt opens <think>: the call is forced once the (budgeted) reasoning has closed
    extra = {"thinking_token_budget": 8} if name == "GLM-Z1-9B-0414" else {}
    reply = _client(srv).chat.completions.create(model="glm", messages=ASK, tools=tools, tool_choice="required",
                                                 max_tokens=200, temperature=0, extra_body=extra)
    assert_forced_call(reply.choices[0], tools)


def test_streamed_chat_carries_the_same_text(served) -> None:
    _, _, srv = served
    client = _client(srv)
    body = dict(model="glm", messages=ASK, max_tokens=MAX_TOKENS, temperature=0)
    whole = client.chat.completions.create(**body).choices[0].message
    chunks = list(client.chat.completions.create(**body, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]

    def field(obj, name: str) -> str:
        return getattr(obj, name, None) or ""

    assert "".join(field(d, "content") for d in deltas) == field(whole, "content")
    assert "".join(field(d, "reasoning_content") for d in deltas) == field(whole, "reasoning_content")

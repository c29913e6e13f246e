"""Served base + LoRA adapters over HTTP (the openai SDK as the client): each adapter's greedy output
equals its PEFT-merged checkpoint's, with requests of other adapters and of the bare base in the same
steps; base requests are unchanged; /v1/models lists the adapters; metrics count per adapter."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from model import EngineConfig, LLMEngine, SamplingParams
from tests.helpers.live_server import ThreadedServer

PROMPTS = [[1, 504, 3310, 2231, 918], [1, 10442, 7, 887], [1, 42, 4242, 31337, 90, 901, 17]]  # token ids
MAX_TOKENS = 8


def reference(model_dir: str, prompts: list[list[int]]) -> list[str]:
    """Greedy completions of a checkpoint served alone (the merged copy, or the bare base)."""
    engine = LLMEngine.from_model(model_dir, EngineConfig(kv_cache_memory=16 << 20))
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    return [o[0].text_delta for o in outs]


async def completions_together(base_url: str, jobs: list[tuple[str, list[int]]]) -> list[str]:
    """All (model, prompt ids) completions at once; returns each one's text."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url + "/v1", api_key="unused")

    async def one(model: str, prompt: list[int]) -> str:
        reply = await client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                                extra_body={"ignore_eos": True})
        return reply.choices[0].text

    try:
        return await asyncio.gather(*(one(m, p) for m, p in jobs))
    finally:
        await client.close()


def settings(model: str, **kw):
    from server.settings import Settings

    return Settings(model=model, kv_cache_memory=32 << 20, self_test="off", max_num_seqs=16, **kw)


@pytest.fixture(scope="module")
def llama_server(tiny_llama_dir, llama_adapters):
    loras = [f"{name}={adapter}" for name, (adapter, _) in llama_adapters.items()]
    with ThreadedServer(settings(tiny_llama_dir, lora=loras, max_loras=3)) as srv:
        yield srv


def test_llama_adapters_and_base_batched_together_equal_merged_checkpoints(llama_server, tiny_llama_dir,
                                                                             llama_adapters):
    base = llama_server.state.model_name
    jobs = [(m, p) for p in PROMPTS for m in (base, *llama_adapters)]
    got = asyncio.run(completions_together(llama_server.base_url, jobs))
    want = {base: reference(tiny_llama_dir, PROMPTS)}
    want.update({name: reference(merged, PROMPTS) for name, (_, merged) in llama_adapters.items()})
    for (model, prompt), ids in zip(jobs, got):
        assert ids == want[model][PROMPTS.index(prompt)], (model, prompt)
    for name in llama_adapters:  # every adapter changes what the model says
        assert want[name] != want[base]
    assert llama_server.engine.engine.lora.num_mixed_steps > 0  # adapters and base shared forwards


def test_models_lists_adapters_with_the_base_as_parent(llama_server, llama_adapters):
    from openai import OpenAI

    client = OpenAI(base_url=llama_server.base_url + "/v1", api_key="unused")
    cards = {m.id: m for m in client.models.list().data}
    base = llama_server.state.model_name
    for name, (adapter, _) in llama_adapters.items():
        assert cards[name].model_extra["parent"] == base
        assert cards[name].model_extra["root"].endswith("adapter")
    assert cards[base].model_extra.get("parent") is None
    assert client.models.retrieve("a2").id == "a2"


def test_chat_picks_the_adapter_by_model_name(llama_server):
    from openai import OpenAI

    client = OpenAI(base_url=llama_server.base_url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "Hello there"}]
    base = llama_server.state.model_name
    replies = {m: client.chat.completions.create(model=m, messages=messages, max_tokens=6, temperature=0)
               for m in (base, "a1", "a1")}
    assert len({r.choices[0].message.content for r in replies.values()}) == 2  # adapter != base, same each time
    assert {m: r.model for m, r in replies.items()} == {base: base, "a1": "a1"}  # the adapter's name, as vLLM
    with pytest.raises(Exception) as err:
        client.chat.completions.create(model="nope", messages=messages, max_tokens=2)
    assert getattr(err.value, "status_code", None) == 404


def test_streamed_responses_report_the_adapter_as_model(llama_server):
    from openai import OpenAI

    client = OpenAI(base_url=llama_server.base_url + "/v1", api_key="unused")
    chat = client.chat.completions.create(model="a3", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                          temperature=0, stream=True)
    completion = client.completions.create(model="a3", prompt=[1, 2000, 3000], max_tokens=3, temperature=0, stream=True)
    models = {chunk.model for stream in (chat, completion) for chunk in stream}
    assert models == {"a3"}
    whole = client.completions.create(model="a3", prompt=[1, 2000, 3000], max_tokens=2, temperature=0)
    assert whole.model == "a3"
    assert client.embeddings.create(model="a3", input="Hello").model == "a3"
    base = llama_server.state.model_name
    assert client.completions.create(model=base, prompt=[1, 2000], max_tokens=1).model == base


def test_metrics_count_requests_and_tokens_per_adapter(llama_server):
    asyncio.run(completions_together(llama_server.base_url, [("a3", [1, 2000, 3000])]))
    text = httpx.get(llama_server.base_url + "/metrics").text
    lines = [line for line in text.splitlines() if 'lora_name="a3"' in line]
    requests = [line for line in lines if line.startswith("glmserve:lora_requests_total")]
    tokens = [line for line in lines if "lora_generation_tokens_total" in line]
    assert requests and float(requests[0].split()[-1]) >= 1
    assert tokens and float(tokens[0].split()[-1]) >= MAX_TOKENS


def test_glm_adapter_and_base_batched_together_equal_merged_checkpoint(tiny_glm_dir, glm_adapter):
    adapter, merged = glm_adapter
    with ThreadedServer(settings(tiny_glm_dir, lora=[f"g1={adapter}"])) as srv:
        base = srv.state.model_name
        jobs = [(m, p) for p in PROMPTS for m in (base, "g1")]
        got = asyncio.run(completions_together(srv.base_url, jobs))
        mixed = srv.engine.engine.lora.num_mixed_steps
    want = {base: reference(tiny_glm_dir, PROMPTS), "g1": reference(merged, PROMPTS)}
    assert want["g1"] != want[base]
    for (model, prompt), ids in zip(jobs, got):
        assert ids == want[model][PROMPTS.index(prompt)], (model, prompt)
    assert mixed > 0


def lora_requests(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("glmserve:lora_requests_total") and f'lora_name="{name}"' in line)


def test_task_endpoints_pick_the_adapter(llama_server):
    before = lora_requests(llama_server.base_url, "a2")
    for path, body in (("/v1/summarize", {"text": "The harbour opens at dawn. Ships leave at noon.", "max_length": 8}),
                       ("/v1/translate", {"text": "Good morning", "target_lang": "fr"})):
        r = httpx.post(llama_server.base_url + path, json={**body, "model": "a2", "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "a2"
        with httpx.stream("POST", llama_server.base_url + path, timeout=120,
                          json={**body, "model": "a2", "temperature": 0, "stream": True}) as streamed:
            events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
        assert events[-1]["model"] == "a2"  # the closing event carries the model
    assert lora_requests(llama_server.base_url, "a2") >= before + 2

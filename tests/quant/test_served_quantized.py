"""A server started with --quantization int4 answers through the openai SDK, exactly as the same int4
engine does offline, and /v1/models reports the quantization and the resident weight bytes."""
from __future__ import annotations

from openai import OpenAI

from model import EngineConfig, LLMEngine, SamplingParams
from tests.helpers.live_server import ThreadedServer


def test_int4_server_answers_through_the_openai_sdk(tiny_llama_dir: str) -> None:
    from server.settings import Settings

    settings = Settings(model=tiny_llama_dir, served_model_name="tiny-int4", self_test="off",
                        kv_cache_memory="16MiB", quantization="int4")
    prompt = "Quantized weights are"
    with ThreadedServer(settings) as srv:
        client = OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        [card] = client.models.list().data
        got = client.completions.create(model="tiny-int4", prompt=prompt, max_tokens=16, temperature=0)
        chat = client.chat.completions.create(model="tiny-int4", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, temperature=0)
        ids = srv.engine.tokenizer.encode(prompt)
    assert card.id == "tiny-int4" and card.quantization == "int4 (group 32)"
    float_bytes = LLMEngine.from_model(tiny_llama_dir, EngineConfig(kv_cache_memory=16 << 20)).runner.weight_bytes
    assert 0 < card.weight_bytes < 0.2 * float_bytes
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    offline = LLMEngine.from_model(tiny_llama_dir, EngineConfig(kv_cache_memory=16 << 20, quantization="int4"))
    [[expected]] = offline.generate([ids], SamplingParams(temperature=0, max_tokens=16))
    assert got.choices[0].text == expected.text_delta and got.usage.completion_tokens == len(expected.token_ids)

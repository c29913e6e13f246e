"""`--num-speculative-tokens`: a live server decodes with n-gram drafts, answers exactly as without them,
and reports the drafts in /metrics."""
from __future__ import annotations

import httpx

from model import EngineConfig, LLMEngine, SamplingParams
from tests.helpers.live_server import ThreadedServer


def test_speculative_server_answers_like_plain_decoding(tiny_llama_dir: str) -> None:
    from server.settings import Settings

    phrase = "the quick brown fox jumps over the lazy dog and "
    prompt = phrase * 6
    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", self_test="off", kv_cache_memory="32MiB",
                        num_speculative_tokens=4)
    with ThreadedServer(settings) as srv:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": True}
        got = httpx.post(srv.base_url + "/v1/completions", json=body, timeout=120).json()
        metrics = httpx.get(srv.base_url + "/metrics", timeout=30).text
        ids = srv.engine.tokenizer.encode(prompt)
    plain = LLMEngine.from_model(tiny_llama_dir, EngineConfig(kv_cache_memory=32 << 20))
    [[expected]] = plain.generate([ids], SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    assert got["choices"][0]["text"] == expected.text_delta and got["usage"]["completion_tokens"] == 48
    accepted = [line for line in metrics.splitlines()
                if line.startswith("glmserve:spec_decode_num_accepted_tokens_total")]
    assert accepted and float(accepted[0].split()[-1]) > 0

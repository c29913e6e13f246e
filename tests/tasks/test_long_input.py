"""A 200,000-character document through /v1/summarize and /v1/translate on a live tiny server.

Its own server with a 2048-token context: with the 512-token one of the other modules the same
text would need ~170 chunks and ~8 reduce levels, minutes on two shared cores, and map-reduce is
exercised there already.
"""
from __future__ import annotations


import pytest
from openai import OpenAI

from server.serving.tasks.length_control import count_length
from tests.helpers.live_server import ThreadedServer
from tests.tasks.conftest import KEY, VARIED, post


@pytest.fixture(scope="module")
def long_client(tiny_llama_dir: str) -> OpenAI:
    from server.settings import Settings

    settings = Settings(model=tiny_llama_dir, served_model_name="tiny", api_key=[KEY], self_test="off",
                        max_model_len=2048, max_num_seqs=64, max_num_batched_tokens=4096, kv_cache_memory="256MiB")
    with ThreadedServer(settings) as srv:
        yield OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=600)


def long_document() -> str:
    paragraphs, i = [], 0
    while sum(len(p) + 2 for p in paragraphs) < 200_000:
        paragraphs.append(f"Section {i}: the harbor bridge carried {i} vehicles a day. Engineers found corrosion "
                          f"in support {i % 7}, and repairs will take {i % 12 + 1} months.")
        i += 1
    return "\n\n".join(paragraphs)


def test_summary_of_two_hundred_thousand_characters(long_client: OpenAI) -> None:
    text = long_document()
    assert len(text) >= 200_000
    out = post(long_client, "/summarize", {"text": text, "max_length": 40, **VARIED})
    assert out["num_chunks"] > 10
    assert 0 < count_length(out["summary"], "words") <= 40
    assert out["usage"]["prompt_tokens"] > 40_000  # every chunk was read

"""POST /v1/summarize against a live server over a random tiny model with a 512-token context."""
from __future__ import annotations

from openai import OpenAI

from server.serving.tasks.length_control import count_length
from tests.tasks.conftest import VARIED, post, stream, streamed_text


def document(num_paragraphs: int) -> str:
    return "\n\n".join(f"Paragraph {i} reports on the council meeting. The vote on item {i} passed by seven to two. "
                       f"Residents asked questions about cost number {i}." for i in range(num_paragraphs))


def test_short_text_is_one_chunk_with_the_documented_shape(task_client: OpenAI) -> None:
    out = post(task_client, "/summarize", {"text": "The council approved three new libraries.", "max_length": 20, **VARIED})
    assert set(out) == {"id", "object", "created", "model", "summary", "finish_reason", "usage", "num_chunks",
                        "timings"}
    assert out["object"] == "summary" and out["model"] == "tiny" and out["id"].startswith("sum-")
    assert out["num_chunks"] == 1
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert 0 < count_length(out["summary"], "words") <= 20


def test_map_reduced_stream_equals_non_stream_at_temperature_zero(task_client: OpenAI, tiny_task_server) -> None:
    text = document(16)
    tokenizer = tiny_task_server.engine.tokenizer
    assert len(tokenizer.encode(text)) > 512  # more than the whole context: map-reduce is needed
    body = {"text": text, "max_length": 25, **VARIED}
    whole = post(task_client, "/summarize", body)
    assert whole["num_chunks"] >= 2
    # every chunk went through the model: the prompts together hold at least the whole text
    assert whole["usage"]["prompt_tokens"] > len(tokenizer.encode(text))
    assert 0 < count_length(whole["summary"], "words") <= 25
    events = stream(task_client, "/summarize", body)
    assert all(e["object"] == "summary.chunk" and e["id"] == events[0]["id"] for e in events)
    assert whole["summary"].strip()
    assert streamed_text(events) == whole["summary"]
    last = events[-1]
    assert last["delta"] == "" and last["finish_reason"] == "stop"
    assert last["num_chunks"] == whole["num_chunks"] > 1
    assert last["usage"]["completion_tokens"] > 0


def test_headline_style_is_one_line(task_client: OpenAI) -> None:
    out = post(task_client, "/summarize", {"text": document(2), "style": "headline", "max_length": 12, **VARIED})
    assert "\n" not in out["summary"]
    assert 0 < count_length(out["summary"], "words") <= 12


def test_chars_unit_for_chinese_output(task_client: OpenAI) -> None:
    out = post(task_client, "/summarize", {"text": "市议会周二投票通过扩建公共图书馆系统的方案。" * 3, "max_length": 30, **VARIED})
    assert 0 < count_length(out["summary"], "chars") <= 30  # Chinese input: the unit defaults to chars

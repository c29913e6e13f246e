"""POST /v1/translate against a live server over a random tiny model with a 512-token context."""
from __future__ import annotations

import concurrent.futures

from openai import OpenAI

from tests.tasks.conftest import VARIED, post, stream, streamed_text

PARAGRAPHS = ["今天天气很好，我们去公园散步吧。", "会议改到明天上午十点，请大家准时参加。",
              "如果您对产品不满意，可以在三十天内申请全额退款。", "您的包裹已经发出，预计三天内送达。"]


def test_documented_shape_and_detected_source_language(task_client: OpenAI) -> None:
    out = post(task_client, "/translate", {"text": PARAGRAPHS[0], "target_lang": "en", **VARIED})
    assert set(out) == {"id", "object", "created", "model", "translation", "finish_reason", "source_lang",
                        "target_lang", "glossary_unhonored", "usage", "num_chunks", "timings"}
    assert out["object"] == "translation" and out["id"].startswith("tr-")
    assert (out["source_lang"], out["target_lang"], out["num_chunks"]) == ("zh", "en", 1)
    assert out["translation"].strip()


def test_paragraphs_come_back_in_order_with_their_breaks(task_client: OpenAI) -> None:
    """Each paragraph alone, then all together: the whole is the parts in order, joined by the
    original breaks (greedy decoding makes each paragraph's translation reproducible)."""
    paragraphs = PARAGRAPHS[:3]
    text = paragraphs[0] + "\n\n" + paragraphs[1] + "\n\n\n" + paragraphs[2] + "\n"
    body = {"target_lang": "en", "source_lang": "zh", **VARIED}
    with concurrent.futures.ThreadPoolExecutor(len(paragraphs)) as pool:
        parts = list(pool.map(lambda p: post(task_client, "/translate", {**body, "text": p})["translation"],
                              paragraphs))
    assert len(set(parts)) == len(parts) and all(parts)
    whole = post(task_client, "/translate", {**body, "text": text})
    assert whole["num_chunks"] == 3
    assert whole["translation"] == parts[0] + "\n\n" + parts[1] + "\n\n\n" + parts[2] + "\n"


def test_a_paragraph_longer_than_the_context_is_split_and_rejoined(task_client: OpenAI) -> None:
    text = "".join(f"这是第{i}句话，讲的是城市交通。" for i in range(30))  # one paragraph over the piece budget
    out = post(task_client, "/translate", {"text": text, "target_lang": "en", **VARIED})
    assert out["num_chunks"] > 1
    assert "\n\n" not in out["translation"]  # still one paragraph


def test_unhonored_glossary_terms_are_reported(task_client: OpenAI) -> None:
    glossary = {"包裹": "parcel", "退款": "refund", "服务器": "server"}
    out = post(task_client, "/translate", {"text": PARAGRAPHS[3], "target_lang": "en", "glossary": glossary, **VARIED})
    translation = out["translation"].lower()
    # 包裹 is in the text: reported exactly when "parcel" is missing; the others are not in the text
    assert out["glossary_unhonored"] == ([] if "parcel" in translation else ["包裹"])


def test_stream_equals_non_stream_at_temperature_zero(task_client: OpenAI) -> None:
    body = {"text": "\n\n".join(PARAGRAPHS[:2]), "target_lang": "en", "glossary": {"会议": "meeting"}, **VARIED}
    whole = post(task_client, "/translate", body)
    events = stream(task_client, "/translate", body)
    assert all(e["object"] == "translation.chunk" for e in events)
    assert whole["translation"].strip()
    assert streamed_text(events) == whole["translation"]
    last = events[-1]
    assert last["finish_reason"] == "stop" and last["source_lang"] == "zh" and last["num_chunks"] == 2
    assert last["glossary_unhonored"] == whole["glossary_unhonored"]


def test_same_source_and_target_language_returns_the_text(task_client: OpenAI) -> None:
    out = post(task_client, "/translate", {"text": "Hello there.\n\nSecond line.", "target_lang": "en"})
    assert out["translation"] == "Hello there.\n\nSecond line."
    assert out["source_lang"] == "en" and out["usage"]["total_tokens"] == 0

"""Language detection (server/serving/tasks/langdetect.py) on the shipped set and on codes."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from server.serving.tasks.langdetect import detect_language, normalize_language_code

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"
REQUIRED = {"zh", "en", "ja", "ko", "fr", "de", "es", "ru"}


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_shipped_set_covers_the_required_languages() -> None:
    counts = Counter(item["language"] for item in load("langdetect.jsonl"))
    assert REQUIRED <= set(counts), f"missing: {REQUIRED - set(counts)}"
    assert min(counts.values()) >= 10


def test_detection_is_at_least_95_percent_correct_on_the_shipped_set() -> None:
    items = load("langdetect.jsonl")
    wrong = [(i["language"], detect_language(i["text"]), i["text"]) for i in items
             if detect_language(i["text"]) != i["language"]]
    assert 1 - len(wrong) / len(items) >= 0.95, wrong


def test_detection_of_every_eval_source_text() -> None:
    """The translation and summary eval sets rely on source_lang auto-detection being right."""
    translate = [(i["text"], i["source_lang"]) for i in load("translate.jsonl")]
    summarize = [(i["text"], i["language"]) for i in load("summarize.jsonl")]
    for text, lang in translate + summarize:
        assert detect_language(text) == lang, text


def test_text_without_letters_is_undetermined() -> None:
    assert detect_language("12345 67.89 %$#") == "und"


def test_a_few_han_characters_outweigh_latin_letters() -> None:
    assert detect_language("GPU 显卡的价格今年上涨了") == "zh"


def test_kana_marks_japanese_even_among_kanji() -> None:
    assert detect_language("東京駅で友達に会いました。") == "ja"


def test_long_input_is_sampled_not_scanned() -> None:
    text = ("Der Zug nach München fährt um drei Uhr ab. " * 5000)
    assert len(text) > 200_000
    assert detect_language(text) == "de"


def test_codes_are_normalized_and_unknown_ones_refused() -> None:
    assert normalize_language_code("zh-CN") == "zh"
    assert normalize_language_code("EN_us") == "en"
    assert normalize_language_code("jpn") == "ja"
    assert normalize_language_code("xx") is None
    assert normalize_language_code("klingon") is None

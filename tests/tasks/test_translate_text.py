"""PieceCleaner (a translated piece's output) and the glossary check."""
from __future__ import annotations

from server.serving.tasks.translate_text import PieceCleaner, unhonored_terms


def clean(pieces: list[str], source: str = "") -> str:
    cleaner = PieceCleaner(source)
    out = []
    for piece in pieces:
        out.append(cleaner.feed(piece))
        if cleaner.done:
            break
    out.append(cleaner.finish())
    assert "".join(out) == cleaner.text  # what streamed is what the piece is
    return cleaner.text


def test_label_and_quotes_around_the_answer_are_removed() -> None:
    assert clean(["Translation: \"Your", " parcel has", " been sent.\"  "]) == "Your parcel has been sent."


def test_quotes_stay_when_the_source_is_quoted() -> None:
    assert clean(['"Hello"'], source='"你好"') == '"Hello"'


def test_a_blank_line_ends_the_piece() -> None:
    assert clean(["Bonjour le monde.", "\n\nNote: this is French."]) == "Bonjour le monde."


def test_inner_whitespace_is_kept_and_trailing_dropped() -> None:
    assert clean(["  ", "Hello", " there,\n", "world", "   "]) == "Hello there,\nworld"


def test_glossary_terms_missing_from_the_output_are_reported() -> None:
    glossary = {"模型": "model", "显卡": "graphics card", "服务器": "server"}
    missing = unhonored_terms(glossary, "这个模型可以在一张显卡上运行。", "This network runs on one graphics card.")
    assert missing == ["模型"]  # 服务器 is not in the source: nothing to honour


def test_glossary_match_is_case_insensitive_whole_word_with_plurals() -> None:
    assert unhonored_terms({"显卡": "Graphics Card"}, "显卡", "two graphics cards") == []
    assert unhonored_terms({"art": "艺术"}, "the start", "开始") == []  # "art" is not a word of the source
    assert unhonored_terms({"cloud": "云端"}, "the cloud", "云") == ["cloud"]

"""LengthLimiter: sentence-boundary cuts, the 80% floor, units, styles, and stream == whole."""
from __future__ import annotations

import re

from server.serving.tasks.length_control import ELLIPSIS, LengthLimiter, count_length

TEXT = ("Summary: The council voted to expand the library system. Three branches will be built in poor "
        "neighborhoods. The cost is 24 million dollars over five years. Construction starts next spring.")


def run(text: str, max_length: int | None, unit: str = "words", style: str = "paragraph", piece: int = 3) -> str:
    """Feeds `text` in pieces of `piece` characters, as a token stream would arrive."""
    limiter = LengthLimiter(max_length, unit, style)
    out = []
    for i in range(0, len(text), piece):
        out.append(limiter.feed(text[i:i + piece]))
        if limiter.done:
            break
    out.append(limiter.finish())
    return "".join(out)


def test_counting_words_and_chars() -> None:
    assert count_length("The cat sat.", "words") == 3
    assert count_length("今天 天气", "words") == 4  # a CJK character is a word
    assert count_length("今天 天气。", "chars") == 5  # spaces do not count


def test_without_a_limit_only_the_label_and_outer_space_go() -> None:
    assert run("  " + TEXT + "  \n", None) == TEXT[len("Summary: "):]


def test_cut_at_a_sentence_boundary_once_80_percent_is_reached() -> None:
    out = run(TEXT, 20)
    assert out == "The council voted to expand the library system. Three branches will be built in poor neighborhoods."
    assert 16 <= count_length(out, "words") <= 20


def test_a_sentence_crossing_the_limit_early_is_cut_at_a_word_with_an_ellipsis() -> None:
    out = run(TEXT, 12)
    assert out.endswith(ELLIPSIS)
    assert count_length(out, "words") == 12


def test_chars_unit_for_chinese() -> None:
    text = "市议会通过了扩建图书馆的方案。三座分馆将在四年内建成。费用约为两千四百万元。"
    out = run(text, 30, unit="chars")
    assert count_length(out, "chars") <= 30
    assert count_length(out, "chars") >= 24
    assert out.endswith(("。", ELLIPSIS))


def test_headline_is_one_line_without_final_period() -> None:
    out = run("**Council expands libraries.**\nMore text follows here.", 10, style="headline")
    assert out == "Council expands libraries"


def test_paragraph_style_joins_lines() -> None:
    out = run("First point here.\nSecond point here.", None)
    assert out == "First point here. Second point here."


def test_bullets_keep_their_lines() -> None:
    out = run("- First point.\n- Second point.\n- Third point.\n", None, style="bullets")
    assert out == "- First point.\n- Second point.\n- Third point."


def test_streamed_text_is_the_same_whatever_the_piece_size() -> None:
    for max_length in (None, 8, 15, 20, 40):
        whole = run(TEXT, max_length, piece=len(TEXT))
        for piece in (1, 2, 5, 17):
            assert run(TEXT, max_length, piece=piece) == whole, (max_length, piece)


def test_limit_is_never_exceeded() -> None:
    words = re.findall(r"\S+", TEXT)
    for max_length in range(1, len(words) + 3):
        assert count_length(run(TEXT, max_length), "words") <= max_length

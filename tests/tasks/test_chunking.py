"""text_chunking: paragraph, then sentence, then hard splits within a token budget, order kept."""
from __future__ import annotations

import pytest

from server.serving.tasks.text_chunking import chunk_text, pack_texts, split_paragraphs, split_sentences


@pytest.fixture(scope="module")
def count_tokens(tiny_llama_dir: str):
    from model import Tokenizer

    tokenizer = Tokenizer(tiny_llama_dir)
    return lambda text: len(tokenizer.encode(text))


def test_sentences_split_on_chinese_and_latin_punctuation() -> None:
    assert split_sentences("第一句。第二句！第三句？最后") == ["第一句。", "第二句！", "第三句？", "最后"]
    assert split_sentences("One. Two! Three? Four") == ["One. ", "Two! ", "Three? ", "Four"]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop." ', "Then left."]


def test_paragraphs_keep_their_separators() -> None:
    text = "A one.\n\n  B two.\n\n\nC three."
    parts = split_paragraphs(text)
    assert parts == ["A one.\n\n  ", "B two.\n\n\n", "C three."]
    assert "".join(parts) == text


def test_chunks_are_consecutive_slices_within_budget(count_tokens) -> None:
    paragraphs = [f"Paragraph {i} starts here. It has a second sentence about topic {i}! And a third?"
                  for i in range(40)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, count_tokens, 64)
    assert "".join(chunks) == text  # nothing lost, nothing reordered
    assert len(chunks) > 5
    assert all(count_tokens(c) <= 64 for c in chunks)
    # whole paragraphs fit the budget, so every chunk ends at a paragraph boundary
    assert all(c.endswith("\n\n") for c in chunks[:-1])


def test_a_long_chinese_paragraph_is_split_at_sentence_ends(count_tokens) -> None:
    text = "".join(f"这是第{i}个句子，它讲述了一个关于城市交通的小故事。" for i in range(60))
    chunks = chunk_text(text, count_tokens, 80)
    assert "".join(chunks) == text
    assert len(chunks) > 3
    assert all(count_tokens(c) <= 80 for c in chunks)
    assert all(c.endswith("。") for c in chunks)


def test_a_run_without_boundaries_is_hard_split(count_tokens) -> None:
    text = "word " * 400 + "没有标点的中文" * 100
    chunks = chunk_text(text, count_tokens, 50)
    assert "".join(chunks) == text
    assert all(count_tokens(c) <= 50 for c in chunks)


def test_text_within_budget_is_one_chunk(count_tokens) -> None:
    assert chunk_text("Short text.", count_tokens, 100) == ["Short text."]
    assert chunk_text("", count_tokens, 100) == []


def test_pack_texts_groups_in_order_within_budget(count_tokens) -> None:
    parts = [f"Summary number {i} of a part." for i in range(12)]
    groups = pack_texts(parts, count_tokens, 30)
    assert [p for g in groups for p in g] == parts
    assert len(groups) > 1
    assert all(count_tokens("\n\n".join(g)) <= 30 for g in groups if len(g) > 1)

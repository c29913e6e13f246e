"""Splitting long text into token-budgeted chunks on paragraph, then sentence, boundaries.

    chunks = chunk_text(text, lambda s: len(tokenizer.encode(s)), budget=1024)
    assert "".join(chunks) == text          # chunks are consecutive slices: nothing lost, order kept

Paragraphs (blank-line separated) are packed whole while they fit; a paragraph over the budget is
split into sentences (. ! ? and the Chinese/Japanese 。！？, plus line breaks); a sentence still over
the budget is cut at whitespace near a character estimate. Token counts of pieces are summed as an
estimate, then every packed chunk is counted again and re-split if the estimate was low.
"""
from __future__ import annotations

import re
from typing import Callable

CountTokens = Callable[[str], int]

# a paragraph ends at a blank line; the separator stays with the paragraph before it
_PARAGRAPH_END = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# sentence ends: Latin punctuation + closing quotes + whitespace; CJK full-width punctuation needs no space
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|[。！？]+[”’」』）)\"']*\s*|[;；]\s*(?=\n)|\n+")


def _split_keeping(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Pieces of `text` that end just after each match; "".join(result) == text."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.end() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs with their trailing blank lines attached."""
    return _split_keeping(text, _PARAGRAPH_END)


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing punctuation and whitespace attached."""
    return _split_keeping(text, _SENTENCE_END)


def _hard_split(text: str, count_tokens: CountTokens, budget: int) -> list[str]:
    """A run without sentence boundaries: slices sized by the text's own characters-per-token,
    cut at the last whitespace of a slice when there is one (Chinese has none: cut anywhere)."""
    pieces: list[str] = []
    rest = text
    while rest:
        # Count a window just over the budget, never the whole rest: counting the rest on every slice
        # made a 200,000-character word cost minutes of tokenizing (quadratic in its length).
        window = min(len(rest), 16 * budget)
        n_tokens = count_tokens(rest[:window])
        while n_tokens <= budget and window < len(rest):
            window = min(len(rest), window * 2)
            n_tokens = count_tokens(rest[:window])
        if n_tokens <= budget:
            pieces.append(rest)
            break
        size = max(1, int(window * budget / n_tokens * 0.9))
        while size > 1 and count_tokens(rest[:size]) > budget:
            size = int(size * 0.8)
        cut = rest.rfind(" ", size // 2, size)
        cut = cut + 1 if cut > 0 else size
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return pieces


def _units(text: str, count_tokens: CountTokens, budget: int) -> list[tuple[str, int]]:
    """(piece, tokens) units each within budget, coarsest first: paragraphs, sentences, slices."""
    units: list[tuple[str, int]] = []
    for paragraph in split_paragraphs(text):
        n = count_tokens(paragraph)
        if n <= budget:
            units.append((paragraph, n))
            continue
        for sentence in split_sentences(paragraph):
            m = count_tokens(sentence)
            if m <= budget:
                units.append((sentence, m))
            else:
                units += [(piece, count_tokens(piece)) for piece in _hard_split(sentence, count_tokens, budget)]
    return units


def _pack(units: list[tuple[str, int]], budget: int) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for piece, n in units:
        if current and used + n > budget:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(piece)
        used += n
    if current:
        chunks.append("".join(current))
    return chunks


def chunk_text(text: str, count_tokens: CountTokens, budget: int) -> list[str]:
    """Consecutive slices of `text` of at most `budget` tokens each (as `count_tokens` counts them)."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1 token, got {budget}")
    if not text:
        return []
    if count_tokens(text) <= budget:
        return [text]
    chunks: list[str] = []
    for chunk in _pack(_units(text, count_tokens, budget), budget):
        # tokens do not add up exactly across a join (BPE merges at the seam): re-split the rare overshoot
        if count_tokens(chunk) > budget and budget > 1:
            chunks += chunk_text(chunk, count_tokens, max(1, int(budget * 0.9)))
        else:
            chunks.append(chunk)
    return chunks


def pack_texts(texts: list[str], count_tokens: CountTokens, budget: int, separator: str = "\n\n") -> list[list[str]]:
    """Groups consecutive texts (e.g. partial summaries) so each group joined by `separator` fits
    the budget; a text over the budget on its own forms a group alone (the caller shortens it)."""
    groups: list[list[str]] = []
    used = 0
    sep_tokens = count_tokens(separator) if separator else 0
    for text in texts:
        n = count_tokens(text)
        if groups and used + sep_tokens + n <= budget:
            groups[-1].append(text)
            used += sep_tokens + n
        else:
            groups.append([text])
            used = n
    return groups

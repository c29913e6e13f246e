"""Text handling around one translated piece: cleaning the model's output as it streams, and the
glossary check.

    cleaner = PieceCleaner()
    sent = cleaner.feed(delta)  ...  cleaner.finish()     # cleaner.text: the piece's final text
    unhonored_terms({"模型": "model"}, "这个模型很小", "This is small")   -> ["模型"]
"""
from __future__ import annotations

import re
import unicodedata

_LABEL = re.compile(r"^\s*[*#]*\s*(?:translation|translated text|译文|翻译)\s*[*]*\s*[:：]\s*[*]*\s*", re.IGNORECASE)
_LABEL_WINDOW = 32  # characters held back at the start until the label question is settled
_OPEN_QUOTES = "\"“«「『'"
_CLOSE_QUOTES = "\"”»」』'"


class PieceCleaner:
    """Strips a leading "Translation:" label, quotes around the whole answer (unless the source is
    quoted too) and surrounding whitespace, and ends the piece at a blank line: a piece is at most one
    paragraph, so a blank line starts the model's own commentary. Text is released as soon as it
    cannot change any more, so the stream and the whole agree."""

    def __init__(self, source: str = "") -> None:
        self.done = False
        self._may_unquote = not source.lstrip()[:1] or source.lstrip()[0] not in _OPEN_QUOTES
        self._quoted = False
        self._head = ""        # start of the output, until the label is settled
        self._started = False
        self._held = ""        # trailing whitespace, sent only if more text follows
        self._sent: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._sent)

    def feed(self, delta: str) -> str:
        if self.done or not delta:
            return ""
        if not self._started:
            self._head += delta
            if len(self._head.lstrip()) < _LABEL_WINDOW and "\n" not in self._head.lstrip():
                return ""
            delta, self._head = self._strip_head(self._head), ""
            self._started = bool(delta)
        return self._emit(delta)

    def _strip_head(self, head: str) -> str:
        head = _LABEL.sub("", head, count=1).lstrip()
        if self._may_unquote and head[:1] and head[0] in _OPEN_QUOTES:
            self._quoted = True
            head = head[1:].lstrip()
        return head

    def finish(self) -> str:
        out = ""
        if not self._started and not self.done:
            out = self._emit(self._strip_head(self._head).rstrip())
        self.done = True
        self._held = ""
        return out

    def _emit(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        blank = re.search(r"\n[ \t]*\n", text)
        if blank is not None:
            text = text[:blank.start()]
            self.done = True
        body = text.rstrip()
        if self._quoted and body[-1:] and body[-1] in _CLOSE_QUOTES:
            body = body[:-1]  # held back: it closes the quotes around the answer if nothing follows
        if not self.done:
            self._held = text[len(body):]
        if body:
            self._started = True
        self._sent.append(body)
        return body


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _contains(haystack: str, needle: str) -> bool:
    """Case-insensitive; whole words for Latin terms ("art" is not in "start", but a plural -s/-es
    counts: "graphics cards" honours "graphics card"), substrings for CJK."""
    h, n = _norm(haystack), _norm(needle)
    if re.fullmatch(r"[\w\s\-'.]+", n) and n.isascii():
        return re.search(rf"(?<!\w){re.escape(n)}(?:e?s)?(?!\w)", h) is not None
    return n in h


def unhonored_terms(glossary: dict[str, str], source: str, translation: str) -> list[str]:
    """Terms that occur in `source` whose required translation is missing from `translation`."""
    return [term for term, required in glossary.items()
            if _contains(source, term) and not _contains(translation, required)]

"""Length control for summaries: counting words / characters and cutting the output while it streams.

    limiter = LengthLimiter(max_length=60, unit="words", style="paragraph")
    for delta in engine_deltas:
        client.send(limiter.feed(delta))
        if limiter.done: break            # the limit is reached: stop generating (aborts the request)
    client.send(limiter.finish())

The limiter releases text a sentence (or line) at a time, so it never has to take back what it sent:
a sentence that would cross `max_length` ends the summary when the summary already has 80% of the
length; otherwise that sentence is cut at a word boundary to fill the limit and ends with "…".
Streaming and non-streaming answers both come out of it, so they are equal by construction.
"""
from __future__ import annotations

import math
import re

# a word is a run of non-space characters, except that each CJK character counts as one word
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORDS = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_UNIT_END = re.compile(r"[.!?…]+[\"'”’)\]*]*\s+|[。！？]+[”’」』）)\"'*]*\s*|\n+")
_LABEL = re.compile(r"^\s*[*#]*\s*(?:summary|headline|title|here(?:'s| is) (?:a |the )?[^:\n]{0,60}|摘要|标题|总结)"
                    r"\s*[*]*\s*[:：]\s*[*]*\s*", re.IGNORECASE)
MIN_SHARE = 0.8  # a summary cut at a sentence boundary keeps at least this share of max_length
ELLIPSIS = "…"


def count_length(text: str, unit: str) -> int:
    """words: whitespace-separated words (a CJK character is one); chars: non-space characters."""
    if unit == "chars":
        return sum(1 for c in text if not c.isspace())
    return len(_WORDS.findall(text))


def _cut(text: str, room: int, unit: str) -> str:
    """The longest word-boundary prefix of `text` within `room` (counting the ellipsis for chars)."""
    if unit == "words":
        words = list(_WORDS.finditer(text))
        return text[:words[room - 1].end()] if room >= 1 and words else ""
    room -= 1  # the ellipsis is a character too
    kept, end = 0, 0
    for i, c in enumerate(text):
        if not c.isspace():
            if kept == room:
                break
            kept += 1
        end = i + 1
    prefix = text[:end]
    if re.search(rf"[{_CJK}]", prefix) is None and end < len(text) and not text[end].isspace():
        space = prefix.rfind(" ")  # do not cut a Latin word in half
        prefix = prefix[:space] if space > 0 else prefix
    return prefix


class LengthLimiter:
    """Online cleaner and limiter of one summary; see the module docstring."""

    def __init__(self, max_length: int | None, unit: str, style: str) -> None:
        self.max_length = max_length
        self.unit = unit
        self.style = style
        self.used = 0
        self.done = False
        self._buffer = ""
        self._pending_space = ""  # whitespace after the last released unit, sent only if more follows
        self._started = False  # the label ("Summary:") is looked for before the first content

    def feed(self, delta: str) -> str:
        if self.done:
            return ""
        self._buffer += delta
        out = []
        while not self.done:
            match = _UNIT_END.search(self._buffer)
            if match is None:
                break
            unit, self._buffer = self._buffer[:match.end()], self._buffer[match.end():]
            out.append(self._release(unit))
        return "".join(out)

    def finish(self) -> str:
        """The rest at the end of generation; the text sent so far plus this is the summary."""
        rest = "" if self.done else self._release(self._buffer, last=True)
        self._buffer = ""
        self.done = True
        return rest

    def _release(self, unit: str, last: bool = False) -> str:
        if not self._started:
            unit = _LABEL.sub("", unit, count=1).lstrip()
            if not unit.strip():
                return ""
            self._started = True
        body = unit.rstrip()
        space = unit[len(body):]
        if not body:
            self._pending_space += space
            return ""
        if self.style == "headline":
            body = body.strip().strip("*\"“”").rstrip(".。")
            self.done = True  # a headline is one line
        body = self._fit(body)
        if body is None:
            self.done = True
            return ""
        out = self._pending_space + body
        if self.style == "paragraph" and "\n" in self._pending_space:
            out = " " + body  # one paragraph: line breaks inside it become spaces
        self._pending_space = space
        return out

    def _fit(self, body: str) -> str | None:
        """`body` if it fits, a cut version when the summary is still short, None to end here."""
        n = count_length(body, self.unit)
        if self.max_length is None or self.used + n <= self.max_length:
            self.used += n
            return body
        self.done = True
        room = self.max_length - self.used
        if self.used >= math.ceil(MIN_SHARE * self.max_length) or room <= 0:
            return None
        cut = _cut(body, room, self.unit).rstrip(" ,;:，；：、")
        if not cut:
            return None
        cut = cut if self.style == "headline" else cut + ELLIPSIS
        self.used += count_length(cut, self.unit)
        return cut

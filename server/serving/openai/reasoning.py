"""Reasoning (`<think>` ... `</think>`) told apart from the answer, for one choice, streamed or not.

    fmt = REASONING_FORMATS["glm45"]
    splitter = ReasoningSplitter(fmt, starts_inside=prompt_opens_reasoning(prompt_tail, fmt))
    reasoning, content = splitter.push(delta)        # per streamed delta: the new text of each part
    reasoning, content = splitter.finish()           # at the end of the choice
    result = parse_reasoning(text, fmt, starts_inside)   # ReasoningResult(reasoning, content)

`parse_reasoning` is the splitter fed the whole text at once, so a streamed choice's concatenated
deltas equal the non-streamed result however the text was cut. Formats:
  glm45        GLM-Z1-0414, GLM-4.5 / 4.6 / 4.7: `<think>` after `<|assistant|>` (GLM-4.7's and Z1's
               templates open it in the prompt); a `<tool_call>` also ends reasoning, as these models
               sometimes call a tool without writing `</think>`.
  qwen3        Qwen3 (and QwQ): the same markers; `<tool_call>` ends reasoning too.
  deepseek_r1  DeepSeek-R1 and its distills: the template opens `<think>` in the prompt, so output always
               starts inside the block (an opening `<think>` the model writes anyway is dropped); text
               before `</think>` is reasoning even when the prompt is not seen to open it.
Whitespace at the edges of the reasoning and between `</think>` and the answer is dropped (templates
re-render both stripped), as is U+FFFD ending the reasoning (half a character cut by a thinking budget);
a choice that never opens a block keeps its text exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

from server.serving.openai.tool_parsers.base import held_suffix


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    start: str = "<think>"
    end: str = "</think>"
    always_starts_inside: bool = False
    closers: tuple[str, ...] = ()  # markers that end reasoning without being consumed (they begin content)

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.start, self.end, *self.closers)


REASONING_FORMATS: dict[str, ReasoningFormat] = {
    "glm45": ReasoningFormat("glm45", closers=("<tool_call>",)),
    "qwen3": ReasoningFormat("qwen3", closers=("<tool_call>",)),
    "deepseek_r1": ReasoningFormat("deepseek_r1", always_starts_inside=True),
}
REASONING_PARSER_CHOICES = ("auto", "none", *REASONING_FORMATS)


def detect_reasoning_format(template_source: str | None) -> str | None:
    """The parser a chat template implies, or None. Only templates that mention `<think>` and belong to
    a family we know qualify: a guess on any other template could swallow an answer as reasoning."""
    source = template_source or ""
    if "<think>" not in source:
        return None
    if "<|assistant|>" in source or "[gMASK]" in source:
        return "glm45"
    if "<｜Assistant｜>" in source:  # DeepSeek's full-width bars
        return "deepseek_r1"
    if "<|im_start|>" in source:
        return "qwen3"
    return None


def prompt_opens_reasoning(prompt_tail: str, fmt: ReasoningFormat) -> bool:
    """Whether the rendered prompt ends inside an open think block (GLM-4.7, Z1, R1 distills, Qwen3
    thinking-2507 templates end with `<think>`), so the model's first token is already reasoning."""
    tail = prompt_tail.rstrip()
    return fmt.always_starts_inside or tail.endswith(fmt.start)


def prompt_closes_reasoning(prompt_tail: str, fmt: ReasoningFormat) -> bool:
    """The template closed the block itself (`<think></think>`: enable_thinking false): no reasoning."""
    return prompt_tail.rstrip().endswith(fmt.end)


@dataclass
class ReasoningResult:
    reasoning: str | None
    content: str


class ReasoningSplitter:
    """One choice's text -> (reasoning, content) pieces as it streams. Phases:
    start (nothing decided) -> inside (reasoning) -> after (answer, leading whitespace dropped), or
    start -> plain (no block: every character is content, unchanged)."""

    def __init__(self, fmt: ReasoningFormat, starts_inside: bool = False) -> None:
        self.fmt = fmt
        self.phase = "inside" if starts_inside or fmt.always_starts_inside else "start"
        self.pending = ""  # text not yet classified (a marker may be starting)
        self.held_ws = ""  # reasoning whitespace held back: dropped if it ends the block
        self.reasoning_started = False  # some non-whitespace reasoning was emitted
        self.reasoning_text = ""
        self.content_text = ""

    @property
    def in_reasoning(self) -> bool:
        return self.phase in ("start", "inside")

    def push(self, delta: str) -> tuple[str, str]:
        self.pending += delta
        return self._advance(final=False)

    def finish(self) -> tuple[str, str]:
        return self._advance(final=True)

    def result(self) -> ReasoningResult:
        return ReasoningResult(self.reasoning_text or None, self.content_text)

    # ---- the state machine ---------------------------------------------------------------------------
    def _advance(self, final: bool) -> tuple[str, str]:
        reasoning, content = [], []
        while True:
            if self.phase == "start":
                if not self._start(final):
                    break
            elif self.phase == "inside":
                piece, done = self._inside(final)
                reasoning.append(piece)
                if not done:
                    break
            elif self.phase == "after":
                head = self.pending.lstrip()
                if not head:
                    self.pending = "" if final else self.pending
                    break
                self.phase, self.pending = "plain", head
            else:  # plain
                content.append(self.pending)
                self.pending = ""
                break
        r, c = "".join(reasoning), "".join(content)
        self.reasoning_text += r
        self.content_text += c
        return r, c

    def _start(self, final: bool) -> bool:
        """Decides whether the choice opens with a think block; False while it cannot tell yet."""
        head = self.pending.lstrip()
        start = self.fmt.start
        if head.startswith(start):
            self.phase, self.pending = "inside", head[len(start):]
            return True
        if not final and start.startswith(head):  # empty, whitespace or a partial `<think>`
            return False
        self.phase = "plain"
        return True

    def _inside(self, final: bool) -> tuple[str, bool]:
        """(reasoning text to emit, whether the block ended)."""
        if not self.reasoning_started:  # a redundant `<think>` right at the start (prompt opened it)
            head = self.pending.lstrip()
            if head.startswith(self.fmt.start):
                self.pending = head = head[len(self.fmt.start):]
            elif not final and head and self.fmt.start.startswith(head):
                return "", False
        ends = [(self.pending.find(m), m) for m in (self.fmt.end, *self.fmt.closers)]
        found = [(i, m) for i, m in ends if i != -1]
        if found:
            idx, marker = min(found)
            text = self.pending[:idx]
            self.pending = self.pending[idx + len(marker):] if marker == self.fmt.end else self.pending[idx:]
            self.phase = "after"
            return self._reasoning(text, closing=True), True
        if final:
            text, self.pending = self.pending, ""
            return self._reasoning(text, closing=True), False
        hold = max(held_suffix(self.pending, m) for m in (self.fmt.end, *self.fmt.closers))
        text = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(text):]
        return self._reasoning(text, closing=False), False

    def _reasoning(self, text: str, closing: bool) -> str:
        """Reasoning with its leading and trailing whitespace removed across deltas (and a broken
        character right before `</think>`: a thinking budget can force the marker mid-character)."""
        if not self.reasoning_started:
            text = text.lstrip()
        combined = self.held_ws + text
        body = _strip_tail(combined)
        self.held_ws = "" if closing else combined[len(body):]
        if body:
            self.reasoning_started = True
        return body


def _strip_tail(text: str) -> str:
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
        end -= 1
    return text[:end]


def parse_reasoning(text: str, fmt: ReasoningFormat, starts_inside: bool = False) -> ReasoningResult:
    splitter = ReasoningSplitter(fmt, starts_inside)
    splitter.push(text)
    splitter.finish()
    return splitter.result()

"""Engine TokenLogprobs -> the two OpenAI logprobs formats (chat's list of objects, completions'
parallel arrays). JSON has no -inf, so impossible tokens report -9999.0 as vLLM does."""
from __future__ import annotations

from model import TokenLogprob
from server.protocol import CompletionLogprobs, TokenLogprobOut, TopLogprob

FLOOR = -9999.0


def _lp(value: float) -> float:
    return value if value > FLOOR else FLOOR


def chat_logprobs(items: list[TokenLogprob]) -> list[TokenLogprobOut]:
    # bytes come from the tokenizer: a token holding half a UTF-8 character has no faithful text
    return [TokenLogprobOut(token=t.token, logprob=_lp(t.logprob), bytes=t.bytes,
                            top_logprobs=[TopLogprob(token=s, logprob=_lp(v), bytes=b)
                                          for (_, s, v), b in zip(t.top_logprobs, t.top_bytes)])
            for t in items]


def append_completion_logprobs(acc: CompletionLogprobs, items: list[TokenLogprob], text_offset: int) -> int:
    """Appends tokens to `acc` starting at `text_offset`; returns the offset after them."""
    for t in items:
        acc.tokens.append(t.token)
        acc.token_logprobs.append(_lp(t.logprob))
        acc.top_logprobs.append({s: _lp(v) for _, s, v in t.top_logprobs})
        acc.text_offset.append(text_offset)
        text_offset += len(t.token)
    return text_offset

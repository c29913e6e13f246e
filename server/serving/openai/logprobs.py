"""Engine TokenLogprobs -> the OpenAI logprobs formats (chat's list of objects, completions' parallel
arrays, echoed prompts included) and vLLM's `prompt_logprobs`. JSON has no -inf, so impossible tokens
report -9999.0 as vLLM does."""
from __future__ import annotations

from model import TokenLogprob
from server.protocol import CompletionLogprobs, PromptLogprob, TokenLogprobOut, TopLogprob

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
        _append(acc, t.token, t.logprob, t.top_logprobs, text_offset)
        text_offset += len(t.token)
    return text_offset


def _append(acc: CompletionLogprobs, token: str, logprob: float, top: list[tuple[int, str, float]],
            text_offset: int) -> None:
    acc.tokens.append(token)
    acc.token_logprobs.append(_lp(logprob))
    alternatives = {s: _lp(v) for _, s, v in top}
    alternatives.setdefault(token, _lp(logprob))  # OpenAI: the chosen token is always included
    acc.top_logprobs.append(alternatives)
    acc.text_offset.append(text_offset)


def append_echo_logprobs(acc: CompletionLogprobs, first_token: str, items: list[TokenLogprob | None],
                         offsets: list[int], top_k: int) -> None:
    """The echoed prompt's tokens at their text offsets: the first has no logprob (nothing precedes it)."""
    for t, offset in zip(items, offsets):
        if t is None:
            acc.tokens.append(first_token)
            acc.token_logprobs.append(None)
            acc.top_logprobs.append(None)
            acc.text_offset.append(offset)
        else:
            _append(acc, t.token, t.logprob, t.top_logprobs[:top_k], offset)


def vllm_prompt_logprobs(items: list[TokenLogprob | None]) -> list[dict[str, PromptLogprob] | None]:
    """Per prompt token: {token id: logprob, rank, decoded_token} for the token and its top alternatives."""
    out: list[dict[str, PromptLogprob] | None] = []
    for t in items:
        if t is None:
            out.append(None)
            continue
        entry = {str(t.token_id): PromptLogprob(logprob=_lp(t.logprob), rank=t.rank, decoded_token=t.token)}
        for rank, (token_id, token, value) in enumerate(t.top_logprobs, start=1):
            entry.setdefault(str(token_id), PromptLogprob(logprob=_lp(value), rank=rank, decoded_token=token))
        out.append(entry)
    return out

"""Prompt-lookup drafts for speculative decoding (no torch).

If the sequence's last n tokens (n = 3, then 2) occurred earlier in its prompt or output, the tokens
that followed that occurrence are proposed as the next ones. Summaries, translations with names,
code edits and quoting answers copy spans of their input, so the drafts are often right. The model
checks them all in one forward pass (Sampler.verify_draft): greedy output is exactly what decoding one
token at a time gives, sampled output has the same distribution.
"""
from __future__ import annotations

from model.engine.sequence import Sequence

NGRAM_SIZES = (3, 2)
SEARCH_WINDOW = 4096  # tokens looked back: bounds the per-step cost on long contexts


def can_speculate(seq: Sequence) -> bool:
    """Requests whose next token depends on the raw logits alone, min_tokens' ban aside (verification
    applies it row by row): greedy, or sampled without a seed (a seeded request must give the same
    tokens whatever else shares its batch, and drafting depends on the batch size)."""
    p = seq.params
    return ((p.greedy or p.seed is None) and not p.logits_processors and not p.needs_penalties
            and not p.logit_bias and p.logprobs is None)


def propose(token_ids: list[int], max_tokens: int) -> list[int]:
    """Up to max_tokens tokens that followed the latest earlier occurrence of the longest suffix n-gram."""
    if max_tokens <= 0:
        return []
    start = max(0, len(token_ids) - SEARCH_WINDOW)
    for n in NGRAM_SIZES:
        if len(token_ids) - start <= n:
            continue
        tail = token_ids[-n:]
        first = tail[0]
        # scan backwards for the most recent match that is not the suffix itself
        for i in range(len(token_ids) - n - 1, start - 1, -1):
            if token_ids[i] == first and token_ids[i:i + n] == tail:
                follow = token_ids[i + n:i + n + max_tokens]
                if follow:
                    return follow
    return []


def propose_drafts(running: list[Sequence], num_speculative_tokens: int, max_batch: int, max_model_len: int) -> None:
    """Sets each running sequence's draft_token_ids for the coming step (empty when it does not draft).

    Drafts are made only while at most `max_batch` sequences decode: past that the step is
    compute-bound and verifying rejected drafts costs more than it saves (docs/BENCHMARKS.md)."""
    for seq in running:
        seq.draft_token_ids = []
    decoding = [seq for seq in running if seq.num_uncomputed_tokens == 1]
    if len(decoding) > max_batch:
        return
    for seq in decoding:
        if can_speculate(seq):
            room = min(num_speculative_tokens, seq.params.max_tokens - seq.num_output_tokens - 1,
                       max_model_len - seq.num_tokens - 1)
            seq.draft_token_ids = propose(seq.token_ids, room)

"""Sampler logits processing on hand-made rows (exact values, no model)."""
from __future__ import annotations

import torch

from model.engine.sampler import Sampler
from model.engine.sequence import Sequence
from model.sampling_params import SamplingParams


def _seq(prompt: list[int], output: list[int], **params) -> Sequence:
    seq = Sequence("r", prompt, SamplingParams(**params))
    seq.token_ids += output
    return seq


def test_presence_and_frequency_penalties_follow_openai() -> None:
    logits = torch.zeros(1, 16)
    Sampler((2,), torch.device("cpu"))(logits, [_seq([1, 3], [5, 5, 9], temperature=0, presence_penalty=0.5,
                                                      frequency_penalty=0.7)])
    assert abs(logits[0, 5].item() + 1.9) < 1e-6 and abs(logits[0, 9].item() + 1.2) < 1e-6 and logits[0, 3].item() == 0.0


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, 1.0]])
    Sampler((), torch.device("cpu"))(logits, [_seq([0], [1], temperature=0, repetition_penalty=2.0)])
    assert logits[0].tolist() == [1.0, -4.0, 2.0, 1.0]


def test_min_tokens_masks_eos_and_logit_bias_steers_greedy() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    tokens, _, failed = Sampler((2,), torch.device("cpu"))(
        logits, [_seq([0], [], temperature=0, min_tokens=1, logit_bias={1: 3.0})])
    assert tokens == [1] and not failed


def test_top_k_one_is_greedy_whatever_the_temperature() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    expected = logits.argmax(-1).tolist()
    seqs = [_seq([0], [], temperature=1.5, top_k=1) for _ in range(4)]
    tokens, _, _ = Sampler((), torch.device("cpu"))(logits.clone(), seqs)
    assert tokens == expected


def test_packed_linear_equals_linear_for_every_row_count() -> None:
    from model.engine.cpu_packing import PackedLinear, bucket_rows

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 48)
    packed = PackedLinear(linear)
    with torch.no_grad():
        for rows in (1, 5, 9, 17, 40):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-4, atol=1e-4)
    assert len({bucket_rows(n) for n in range(1, 513)}) <= 40


def test_top_k_top_p_min_p_within_the_candidates_keep_what_the_full_sort_keeps() -> None:
    """The fast path (kept tokens among the top CANDIDATES) truncates like the full-vocabulary sort."""
    from model.engine import sampler as sampler_module

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 1000, generator=gen) * 4, dim=-1)
    rows = [dict(temperature=1.0, top_p=0.5), dict(temperature=1.0, top_k=20), dict(temperature=1.0, min_p=0.2),
            dict(temperature=1.0, top_k=50, top_p=0.9)]
    seqs = [_seq([0], [], **r) for r in rows]
    s = Sampler((), torch.device("cpu"))
    fast = s._truncate(probs, seqs)
    assert s._candidates(probs, seqs) is not None
    old = sampler_module.CANDIDATES
    sampler_module.CANDIDATES = 1000  # the whole vocabulary: the full sort path
    try:
        assert s._candidates(probs, seqs) is None
        full = s._truncate(probs, seqs)
    finally:
        sampler_module.CANDIDATES = old
    assert torch.equal(fast > 0, full > 0) and torch.equal(fast, full)
    # a row keeping more than the candidates (top_p near 1 on a flat row) falls back to the full sort
    flat = torch.full((1, 1000), 1e-3)
    assert s._candidates(flat, [_seq([0], [], temperature=1.0, top_p=0.99)]) is None


def test_fast_top_p_draws_only_kept_tokens_in_proportion() -> None:
    probs_logits = torch.log(torch.tensor([[0.5, 0.3, 0.15] + [0.05 / 997] * 997]))
    seqs = [_seq([0], [], temperature=1.0, top_p=0.7) for _ in range(2000)]
    tokens, _, _ = Sampler((), torch.device("cpu"))(probs_logits.repeat(2000, 1), seqs)
    counts = torch.bincount(torch.tensor(tokens), minlength=3)
    assert counts[:2].sum() == 2000  # mass before token 2 is 0.8 >= 0.7: only tokens 0 and 1 stay
    assert abs(counts[0].item() / 2000 - 0.5 / 0.8) < 0.05  # drawn in proportion 5 : 3

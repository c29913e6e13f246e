"""N-gram speculative decoding: the same tokens as decoding one at a time, in fewer steps."""
from __future__ import annotations

import random

import pytest

from model import EngineConfig, LLMEngine, SamplingParams
from model.engine.ngram_proposer import propose
from tests.helpers.checkpoints import build_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", num_hidden_layers=2)


def _engine(path: str, k: int, **kw) -> LLMEngine:
    return LLMEngine.from_model(path, EngineConfig(**{"max_num_seqs": 16, "max_num_batched_tokens": 128,
                                                      "kv_cache_memory": 16 << 20, "num_speculative_tokens": k,
                                                      "speculative_max_batch": 16, **kw}))


def _prompts() -> list[list[int]]:
    """Half repetitive (drafts will match), half random (drafts rarely exist)."""
    rng = random.Random(7)
    out = []
    for i in range(8):
        if i % 2 == 0:
            phrase = [rng.randrange(3, 500) for _ in range(rng.randint(5, 20))]
            out.append(phrase * rng.randint(2, 4) + [rng.randrange(3, 500) for _ in range(3)])
        else:
            out.append([rng.randrange(3, 49000) for _ in range(rng.randint(10, 80))])
    return out


def _run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> dict[str, list[int]]:
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{i}", p, sp)
    tokens = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return tokens


def test_propose_follows_the_latest_earlier_occurrence() -> None:
    assert propose([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3) == [7, 5, 1]  # the most recent match wins
    assert propose([4, 5, 6, 4, 5], 4) == [6, 4, 5]  # bigram fallback
    assert propose([1, 2, 3, 4], 4) == [] and propose([1, 1, 1], 0) == []


def test_speculative_greedy_equals_plain_decoding_under_continuous_batching(tiny_dir: str) -> None:
    """Eight concurrent greedy requests, with max_tokens, a stop token id that may land inside an
    accepted draft, and min_tokens: every request's tokens equal the plain engine's, fewer steps run,
    and every block comes back."""
    prompts = _prompts()
    params = []
    for i in range(len(prompts)):
        kw = {"temperature": 0, "max_tokens": 20 + 7 * i, "ignore_eos": True}
        if i == 2:
            kw["stop_token_ids"] = (prompts[i][5],)  # a token of the repeated phrase
        if i == 4:
            kw["min_tokens"] = 10
        params.append(SamplingParams(**kw))
    plain_engine, spec_engine = _engine(tiny_dir, 0), _engine(tiny_dir, 4)
    plain, spec = _run(plain_engine, prompts, params), _run(spec_engine, prompts, params)
    assert spec == plain
    stats = spec_engine.stats()
    assert 0 < stats.spec_accepted_tokens_total <= stats.spec_draft_tokens_total
    assert stats.steps_total < plain_engine.stats().steps_total
    assert stats.generation_tokens_total == plain_engine.stats().generation_tokens_total
    assert stats.num_free_blocks == stats.num_total_blocks


def test_no_drafts_while_more_sequences_decode_than_the_limit(tiny_dir: str) -> None:
    """Six short repetitive prompts prefill in one step and decode in lockstep: a limit of 4 keeps
    every step draft-free, a limit of 6 lets them draft; the tokens are the same either way."""
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]] * 6
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)] * 6
    plain = _run(_engine(tiny_dir, 0), prompts, params)
    for limit, drafts in ((4, False), (6, True)):
        engine = _engine(tiny_dir, 4, speculative_max_batch=limit)
        assert _run(engine, prompts, params) == plain
        assert (engine.stats().spec_draft_tokens_total > 0) is drafts, limit


def test_seeded_and_logprob_requests_never_draft(tiny_dir: str) -> None:
    prompts = _prompts()[:2]
    seeded = [SamplingParams(temperature=0.8, seed=11, max_tokens=24), SamplingParams(temperature=0, max_tokens=24,
                                                                                       logprobs=1)]
    engine = _engine(tiny_dir, 4)
    assert _run(engine, prompts, seeded) == _run(_engine(tiny_dir, 0), prompts, seeded)
    assert engine.stats().spec_draft_tokens_total == 0


def test_small_kv_cache_drops_drafts_instead_of_preempting(tiny_dir: str) -> None:
    from model.engine.model_runner import kv_bytes_per_block
    from model.loader import load_model

    import torch

    block = kv_bytes_per_block(load_model(tiny_dir).config, 16, torch.float32)
    prompts = [p[:40] for p in _prompts()[:4]]
    params = [SamplingParams(temperature=0, max_tokens=40, min_tokens=40)] * 4
    engine = _engine(tiny_dir, 4, max_num_seqs=4, kv_cache_memory=12 * block)
    assert _run(engine, prompts, params) == _run(_engine(tiny_dir, 0, max_num_seqs=4, kv_cache_memory=12 * block),
                                                  prompts, params)
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_min_tokens_ban_applies_to_every_verification_row(tiny_dir: str) -> None:
    """While short of min_tokens a stop id is banned: a verification row whose argmax is that stop id
    (and so equals the draft) must pick the best allowed token instead, as plain sampling does."""
    import torch

    engine = _engine(tiny_dir, 4)
    params = SamplingParams(temperature=0, max_tokens=20, min_tokens=10, stop_token_ids=(99,), ignore_eos=True)
    engine.add_request("m", [5, 6, 7, 8], params)
    engine.step()  # prefill and the first token
    [seq] = engine.postprocessor.requests["m"]
    seq.num_computed_tokens += 1  # as after_step leaves a verified step: the last token's K/V computed
    seq.draft_token_ids = [99, 100]
    logits = torch.zeros(3, engine.model_config.vocab_size)
    logits[:, 99], logits[:, 42] = 5.0, 4.0  # the stop id is every row's argmax, 42 the best allowed
    outs = engine.postprocessor._accept_drafts(seq, logits)
    assert [out.token_ids for out in outs] == [[42]] and not seq.is_finished
    engine.abort("m")


def test_sampled_verification_keeps_certain_drafts_and_rejects_impossible_ones(tiny_dir: str) -> None:
    """With top_k=1 the processed distribution is one-hot: a draft equal to the row's top token is kept
    with probability 1, any other with probability 0 (and the row's top token is emitted instead)."""
    import torch

    from model.engine.sequence import Sequence

    engine = _engine(tiny_dir, 4)
    seq = Sequence("v", [5, 6, 7], SamplingParams(temperature=1.0, top_k=1, max_tokens=8))
    logits = torch.randn(3, engine.model_config.vocab_size)
    top = logits.argmax(dim=-1).tolist()
    assert engine.sampler.verify_draft(logits, seq, top[:2]) == top  # both kept, then row 2's own token
    wrong = (top[0] + 1) % engine.model_config.vocab_size
    assert engine.sampler.verify_draft(logits, seq, [wrong, top[1]]) == [top[0]]


def test_sampled_speculation_keeps_the_token_distribution(tiny_dir: str) -> None:
    """Unseeded sampling at temperature 0.05 (this random model's top token then has p ~ 0.58): 640
    three-token continuations with and without drafts;
    the frequency of each position's most common token agrees within 0.12 (over 4 standard deviations
    of the difference), and drafts were really kept."""
    from collections import Counter

    torch_seed = 1234
    import torch

    # a prompt ending in the token this random model keeps repeating, so drafts (more of it) exist
    loop = _run(_engine(tiny_dir, 0), [[5, 6, 7, 8]], [SamplingParams(temperature=0, max_tokens=8,
                                                                      ignore_eos=True)])["r0"][-1]
    prompt = [5, 6, 7, 8] + [loop] * 6
    params = SamplingParams(temperature=0.05, max_tokens=3, n=16, ignore_eos=True)
    samples = {}
    for k in (0, 4):
        torch.manual_seed(torch_seed + k)
        engine = _engine(tiny_dir, k, max_num_seqs=64, speculative_max_batch=64)
        outs = engine.generate([prompt] * 40, params)
        samples[k] = [tuple(o.token_ids) for choices in outs for o in choices]
        if k:
            assert engine.stats().spec_accepted_tokens_total > 0
    assert len(samples[0]) == len(samples[4]) == 640
    for pos in range(3):
        plain = Counter(s[pos] for s in samples[0])
        spec = Counter(s[pos] for s in samples[4])
        token, count = plain.most_common(1)[0]
        assert abs(count - spec[token]) / 640 < 0.12, (pos, plain.most_common(3), spec.most_common(3))

"""The greedy screen (model/engine/greedy_screen.py): an int8 copy of the lm_head picks candidate tokens, the
real kernel computes their rows, and the argmax must be the full product's, bit for bit at the candidates."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model import EngineConfig, LLMEngine, SamplingParams
from model.engine import greedy_screen
from model.engine.greedy_screen import GreedyScreen
from model.kernels import linear, qlinear, screen

pytestmark = pytest.mark.skipif(not (linear.available() and qlinear.available() and screen.available()),
                                reason="needs the C kernels (linear, int8 with VNNI, screen)")


def _head(vocab: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> linear.KernelLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        # a trained head's spread: some rows much larger than others, as in a real vocabulary
        lin.weight.mul_(torch.rand(vocab, 1) * 4 + 0.1)
        lin.weight.data = lin.weight.data.to(dtype)
    lin.weight.requires_grad_(False)  # as served: autograd would send KernelLinear to F.linear
    return linear.KernelLinear(lin)


def _hidden(head: linear.KernelLinear, rows: int, seed: int) -> torch.Tensor:
    """Final states that point at some token (as a trained model's do), plus noise."""
    g = torch.Generator().manual_seed(seed)
    w = head.weight.float()
    targets = torch.randint(0, w.shape[0], (rows,), generator=g)
    x = 3 * w[targets] / w[targets].norm(dim=1, keepdim=True) + torch.randn(rows, w.shape[1], generator=g) * 0.5
    return x.to(head.weight.dtype).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 9, 32])
def test_candidates_are_the_full_product_and_hold_its_argmax(dtype, rows):
    head = _head(4099, 200, dtype)  # a vocabulary that is no multiple of the kernels' tiles
    built = GreedyScreen.build(head)
    assert built is not None
    for seed in range(6):
        x = _hidden(head, rows, seed)
        full = head(x).float()
        got = built.logits(x)
        assert got is not None
        kept = torch.isfinite(got)
        assert kept.any(dim=1).all()
        assert torch.equal(got[kept], full[kept])  # the kernel's own bits at every candidate
        assert torch.equal(got.argmax(dim=1), full.argmax(dim=1))
        assert bool((got[~kept] == float("-inf")).all())
    assert built.fallbacks == 0 and built.candidates < built.steps * rows * 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_ties_go_to_the_lowest_index_as_argmax(dtype):
    head = _head(1024, 128, dtype, seed=1)
    with torch.no_grad():
        head.weight[900] = head.weight[77]  # two tokens with the same row: equal logits, argmax takes 77
        head.weight[901] = head.weight[77]
    built = GreedyScreen.build(head)
    x = (head.weight[77:78].float() * 5).to(dtype).contiguous()
    full = head(x).float()
    assert int(full.argmax()) == 77 and full[0, 900] == full[0, 77]
    got = built.logits(x)
    assert int(got.argmax()) == 77
    assert got[0, 900] == got[0, 77] == got[0, 901]  # the twins are candidates too, with the same value


def test_flat_logits_zero_and_nan_rows_take_the_full_product(monkeypatch):
    head = _head(4096, 64, torch.float32, seed=2)  # past MAX_CANDIDATES (2048)
    built = GreedyScreen.build(head)
    zero = torch.zeros(1, 64)
    assert built.logits(zero) is None  # every token ties at 0: more candidates than the cap
    nan = torch.full((1, 64), float("nan"))
    assert built.logits(nan) is None
    both = torch.cat([_hidden(head, 1, 3).float(), nan])
    assert built.logits(both) is None
    monkeypatch.setattr(greedy_screen, "MAX_CANDIDATES", 1)
    x = torch.cat([_hidden(head, 1, s) for s in range(4)])
    assert built.logits(x) is None  # 4 rows pointing at different tokens: over a cap of 1
    assert built.fallbacks == 4


def test_not_built_for_what_it_cannot_bound():
    head = _head(512, 64, torch.float32)
    assert GreedyScreen.build(nn.Linear(64, 512, bias=False)) is None  # not the C kernel
    with_bias = linear.KernelLinear(nn.Linear(64, 512, bias=True).requires_grad_(False))
    assert GreedyScreen.build(with_bias) is None
    with torch.no_grad():
        head.weight[3, 5] = float("inf")
    assert GreedyScreen.build(head) is None


@pytest.fixture(scope="module")
def engines():
    """The default model in fp32, with and without the screen."""
    made = {on: LLMEngine.from_model("default", EngineConfig(greedy_screen=on, kv_cache_memory=64 << 20,
                                                             max_num_seqs=8))
            for on in (True, False)}
    # the screen on every step whatever the start-up timing chose here (these tests are about its tokens, not
    # about where it pays): a fresh one, no row limit
    runner = made[True].runner
    runner.greedy_screen = GreedyScreen.build(runner.model.lm_head)
    return made


PROMPTS = ["Write a short story about a robot learning to paint.", "What is the capital of France?",
           "List three prime numbers.", "def fibonacci(n):"]


def _run(engine: LLMEngine, params: list[SamplingParams]) -> list[list[int]]:
    for i, (prompt, p) in enumerate(zip(PROMPTS, params)):
        engine.add_request(f"q{i}-{id(p)}", engine.tokenizer.encode(prompt), p)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return [tokens[k] for k in sorted(tokens)]


def test_default_model_greedy_tokens_are_unchanged(engines):
    on, off = engines[True], engines[False]
    gs = on.runner.greedy_screen
    assert gs is not None and off.runner.greedy_screen is None
    assert type(on.runner.model.lm_head) is linear.KernelLinear  # the screen's exact rows need the kernel
    greedy = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True) for _ in PROMPTS]
    before = gs.steps
    assert _run(on, greedy) == _run(off, greedy)
    assert gs.steps - before >= 40 and gs.fallbacks == 0


def test_rows_that_need_the_whole_distribution_skip_it(engines):
    on, off = engines[True], engines[False]
    gs = on.runner.greedy_screen
    before = gs.steps
    # logprobs read every logit; a sampled row beside greedy ones makes the whole step take the full product
    with_logprobs = [SamplingParams(temperature=0, max_tokens=8, logprobs=2) for _ in PROMPTS[:1]]
    mixed = [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
             SamplingParams(temperature=0.8, max_tokens=8, seed=5, ignore_eos=True)]
    banned = [SamplingParams(temperature=0, max_tokens=8, min_tokens=8)]
    biased = [SamplingParams(temperature=0, max_tokens=8, logit_bias={11: 5.0})]
    for params in (with_logprobs, mixed, banned, biased):
        assert _run(on, params) == _run(off, params)
    assert gs.steps == before


def test_row_limit_is_the_last_row_count_the_screen_won():
    from model.engine import cpu_choices
    from tests.engine.test_cpu_choices import table_timer

    built = GreedyScreen.build(_head(4096, 64, torch.float32, seed=4))
    # wins at 1, 2 and 4 rows, loses at 8: 16 is never timed (the int8 product only gets more compute-bound)
    seconds = {("full", r): 1.0 for r in cpu_choices.SCREEN_ROW_COUNTS}
    seconds |= {("screen", 1): 0.3, ("screen", 2): 0.5, ("screen", 4): 0.8, ("screen", 8): 1.2}
    timer = table_timer(seconds)
    assert cpu_choices.choose_greedy_screen_rows(built, 32, timer) == 4
    assert {rows for _, rows in timer.calls} == {1, 2, 4, 8}
    assert cpu_choices.choose_greedy_screen_rows(built, 1, table_timer({("full", 1): 1.0, ("screen", 1): 2.0})) == 0


def test_steps_with_more_rows_than_the_limit_take_the_full_product(engines):
    on, off = engines[True], engines[False]
    gs = on.runner.greedy_screen
    saved, before = gs.max_rows, gs.steps
    gs.max_rows = 1
    try:
        two = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True) for _ in PROMPTS[:2]]
        assert _run(on, two) == _run(off, two)
    finally:
        gs.max_rows = saved
    # both prompts prefill in one step and decode together to the same length: no step has a single row
    assert gs.steps == before

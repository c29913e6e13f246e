"""Block manager and scheduler: pure Python, no torch, milliseconds."""
from __future__ import annotations

import subprocess
import sys

from model.engine.block_manager import BlockManager
from model.engine.scheduler import Scheduler
from model.engine.sequence import Sequence, SequenceStatus
from model.sampling_params import SamplingParams


def _seq(tokens: list[int], max_tokens: int = 8, rid: str = "r") -> Sequence:
    return Sequence(rid, tokens, SamplingParams(max_tokens=max_tokens))


def _compute(sched: Scheduler) -> None:
    """Pretend the model ran the scheduled step: advance counts; sampling rows get token 7."""
    out = sched.schedule()
    samplers = [s.seq for s in out.scheduled if s.samples]
    sched.after_step(out)
    for seq in samplers:
        seq.append_token(7)


def test_scheduler_and_block_manager_import_no_torch() -> None:
    code = ("import sys, model.engine.scheduler, model.engine.block_manager, model.engine.ngram_proposer; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_allocate_is_all_or_nothing() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    big = _seq(list(range(20)))  # needs 5 blocks
    assert not bm.allocate(big)
    assert bm.num_free_blocks == 4 and big.block_table == []
    small = _seq(list(range(10)))
    assert bm.allocate(small) and len(small.block_table) == 3 and bm.num_free_blocks == 1


def test_prefix_cache_reuses_computed_full_blocks_only() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = _seq(list(range(10)))
    bm.allocate(a)
    b = _seq(list(range(10)) + [99])
    bm.allocate(b)
    assert b.num_computed_tokens == 0  # a's blocks are not computed yet: nothing to share
    a.num_computed_tokens = 10
    bm.register_full_blocks(a)
    c = _seq(list(range(10)) + [42, 43])
    bm.allocate(c)
    assert c.num_computed_tokens == 8 and c.block_table[:2] == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2


def test_freed_cached_blocks_are_hit_again_then_evicted_lru() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    a = _seq(list(range(9)))
    bm.allocate(a)
    a.num_computed_tokens = 9
    bm.register_full_blocks(a)
    bm.free_sequence(a)
    assert bm.num_free_blocks == 4
    again = _seq(list(range(9)))
    assert bm.allocate(again) and again.num_computed_tokens == 8
    bm.free_sequence(again)
    other = _seq(list(range(100, 116)))  # takes all 4 blocks: the cached ones are evicted
    assert bm.allocate(other)
    bm.free_sequence(other)
    assert not bm.cached
    probe = _seq(list(range(9)))
    assert bm.allocate(probe) and probe.num_computed_tokens == 0


def test_whole_prompt_hit_still_computes_last_token() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    a = _seq(list(range(8)))
    bm.allocate(a)
    a.num_computed_tokens = 8
    bm.register_full_blocks(a)
    b = _seq(list(range(8)))
    bm.allocate(b)
    assert b.num_computed_tokens == 4 and b.num_uncomputed_tokens == 4


def test_chunked_prefill_respects_token_budget_and_decodes_go_first() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    short = _seq([1, 2, 3], rid="short")
    sched.add(short)
    _compute(sched)  # short prefilled, sampled its first token
    long = _seq(list(range(25)), rid="long")
    sched.add(long)
    out = sched.schedule()
    assert [(s.seq.request_id, s.num_tokens) for s in out.scheduled] == [("short", 1), ("long", 9)]
    assert not out.scheduled[1].samples
    sched.after_step(out)
    assert long.num_computed_tokens == 9


def _steps(sched: Scheduler) -> list[tuple[str, int]]:
    out = sched.schedule()
    sched.after_step(out)
    return [(s.seq.request_id, s.num_tokens) for s in out.scheduled]


def test_a_running_prefill_leaves_waiting_prompts_up_to_half_the_budget() -> None:
    """A short prompt arriving while a long one prefills starts in the same step (the long one used to
    take the whole budget first); the long one always keeps at least half, and without a free slot or
    free blocks for the waiting prompt nothing is held back."""
    for interleave, expected in [(True, [("long", 7), ("short", 3)]), (False, [("long", 10)])]:
        sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10,
                          interleave_prefills=interleave)
        sched.add(_seq(list(range(40)), rid="long"))
        assert _steps(sched) == [("long", 10)]
        sched.add(_seq([1, 2, 3], rid="short"))
        assert _steps(sched) == expected
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    sched.add(_seq(list(range(40)), rid="long"))
    _steps(sched)
    sched.add(_seq(list(range(100, 120)), rid="other long"))
    assert _steps(sched) == [("long", 5), ("other long", 5)]  # the reserve is at most half the budget
    full = Scheduler(BlockManager(64, 4), max_num_seqs=1, max_num_batched_tokens=10)
    full.add(_seq(list(range(40)), rid="long"))
    _steps(full)
    full.add(_seq([1, 2, 3], rid="short"))
    assert _steps(full) == [("long", 10)]  # no free slot: nothing reserved
    no_blocks = Scheduler(BlockManager(11, 4), max_num_seqs=8, max_num_batched_tokens=10)
    no_blocks.add(_seq(list(range(40)), rid="long"))  # 10 of the 11 blocks
    _steps(no_blocks)
    no_blocks.add(_seq(list(range(100, 108)), rid="short"))  # needs 2 blocks: cannot start
    assert _steps(no_blocks) == [("long", 10)]


def test_max_num_seqs_limits_running() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        sched.add(_seq([i, i + 1], rid=str(i)))
    out = sched.schedule()
    assert len(out.scheduled) == 2 and len(sched.waiting) == 1


def test_preemption_frees_blocks_and_requeues_newest_first() -> None:
    sched = Scheduler(BlockManager(3, 2), max_num_seqs=4, max_num_batched_tokens=100)
    a, b = _seq([1, 2], rid="a"), _seq([3, 4], rid="b")
    sched.add(a)
    sched.add(b)
    _compute(sched)  # each holds 1 full block + sampled a token; one block is free
    _compute(sched)  # a grows into the free block; b cannot grow -> b preempted
    assert sched.num_preemptions >= 1
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and sched.waiting[0] is b
    assert a.status is SequenceStatus.RUNNING


def test_finish_releases_every_block() -> None:
    bm = BlockManager(8, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    seqs = [_seq(list(range(i, i + 6)), rid=str(i)) for i in range(3)]
    for s in seqs:
        sched.add(s)
    _compute(sched)
    for s in seqs:
        sched.finish(s, "abort")
    assert bm.num_free_blocks == 8 and not sched.has_unfinished()


def test_drafts_ride_along_only_within_budget_and_free_blocks() -> None:
    """A decoding sequence's draft adds tokens to its step, counts as computed only once verified, and
    is dropped (never preempting anyone) when the budget or the pool cannot hold it."""
    bm = BlockManager(num_blocks=2, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=8)
    seq = _seq([1, 2, 3], max_tokens=20)
    sched.add(seq)
    _compute(sched)  # prefill; token 7 appended: 4 tokens, 3 computed
    seq.draft_token_ids = [8, 9, 10]
    out = sched.schedule()
    [item] = out.scheduled
    assert (item.num_tokens, item.num_draft, item.samples) == (4, 3, True)
    assert len(seq.block_table) == 2  # room for positions 3..6
    sched.after_step(out)
    assert seq.num_computed_tokens == 4  # the draft positions wait for verification
    seq.append_token(8)
    seq.draft_token_ids = [9, 10, 11, 12]  # positions 5..8 need a third block: there is none
    out = sched.schedule()
    assert (out.scheduled[0].num_tokens, out.scheduled[0].num_draft) == (1, 0) and seq.draft_token_ids == []
    assert out.num_preempted == 0

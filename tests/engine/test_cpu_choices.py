"""The start-up choice of CPU tricks follows the measured timings (an injected timer, not the test
machine's speed), keeps the plain path unless a trick wins by the margin, and the chosen paths compute
what the plain ones compute."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.engine import cpu_choices
from model.engine.cpu_choices import choose_decode_attention, choose_linear_packing, pick
from model.engine.cpu_packing import PackedLinear, mkldnn_available


def table_timer(seconds: dict[tuple[str, int], float]):
    """A timer that runs the work (so it is exercised) and reports the given seconds per (kind, rows)."""
    calls = []

    def timer(label: str, work) -> float:
        work()
        _, kind, rows = label.rsplit("/", 2)
        calls.append((kind, int(rows)))
        return seconds[(kind, int(rows))]
    timer.calls = calls
    return timer


def test_pick_follows_the_timings_and_weighs_each_row_count_alike() -> None:
    work = {"plain": lambda rows: (lambda: None), "packed": lambda rows: (lambda: None)}
    # packed 2x faster at 32 rows but 1.5x slower at 1 row: mean ratio 1.0, not a 5% win -> plain
    timer = table_timer({("plain", 1): 1.0, ("plain", 32): 10.0, ("packed", 1): 1.5, ("packed", 32): 5.0})
    assert pick("x", work, [1, 32], timer).chosen == "plain"
    timer = table_timer({("plain", 1): 1.0, ("plain", 32): 10.0, ("packed", 1): 0.9, ("packed", 32): 5.0})
    choice = pick("x", work, [1, 32], timer)
    assert choice.chosen == "packed" and choice.seconds["packed"][32] == 5.0
    # every candidate is timed at every row count, the same number of times, interleaved
    assert sorted(set(timer.calls)) == [("packed", 1), ("packed", 32), ("plain", 1), ("plain", 32)]
    assert len(timer.calls) == 4 * cpu_choices.ROUNDS and timer.calls[0] != timer.calls[1]
    assert "packed" in choice.describe() and "1/32 rows" in choice.describe()


def test_each_candidate_keeps_its_best_call_so_one_slow_call_does_not_decide() -> None:
    work = {"plain": lambda rows: (lambda: None), "packed": lambda rows: (lambda: None)}
    times = iter([9.0, 1.0] + [2.0, 1.0] * (cpu_choices.ROUNDS - 1))  # plain's first call hit a busy core
    choice = pick("x", work, [1], lambda label, w: next(times))
    assert choice.seconds == {"plain": {1: 2.0}, "packed": {1: 1.0}} and choice.chosen == "packed"


def test_a_measurement_that_contradicts_itself_is_repeated() -> None:
    # the kernel wins at 1 row and "loses" 20x at 32 rows in the first measurement (a neighbour's burst, as
    # seen when two servers started at once); the repeat keeps each call's best, and the kernel wins
    work = {"plain": lambda rows: (lambda: None), "kernel": lambda rows: (lambda: None)}
    first = {("plain", 1): 1.0, ("plain", 32): 5.0, ("kernel", 1): 0.5, ("kernel", 32): 100.0}
    calm = {("plain", 1): 1.0, ("plain", 32): 5.0, ("kernel", 1): 0.5, ("kernel", 32): 1.5}
    calls = []

    def timer_then(later: dict):  # `first` for one measurement's calls, then `later`
        def timer(label: str, w) -> float:
            _, kind, rows = label.rsplit("/", 2)
            calls.append(label)
            return (first if len(calls) <= 4 * cpu_choices.ROUNDS else later)[(kind, int(rows))]
        return timer
    choice = pick("x", work, [1, 32], timer_then(calm))
    assert choice.chosen == "kernel" and choice.seconds["kernel"][32] == 1.5
    assert len(calls) == 2 * 4 * cpu_choices.ROUNDS  # measured twice: the second agreed with itself
    # a steady loss is the kernel's own speed: measured 1 + RETRIES times, then plain stays
    calls.clear()
    choice = pick("y", work, [1, 32], timer_then(first))
    assert choice.chosen == "plain" and len(calls) == (1 + cpu_choices.RETRIES) * 4 * cpu_choices.ROUNDS


def test_a_win_inside_the_margin_keeps_the_plain_path() -> None:
    work = {"plain": lambda rows: (lambda: None), "trick": lambda rows: (lambda: None)}
    just_inside = 1.0 - cpu_choices.MARGIN / 2
    timer = table_timer({("plain", 1): 1.0, ("trick", 1): just_inside})
    assert pick("x", work, [1], timer).chosen == "plain"
    timer = table_timer({("plain", 1): 1.0, ("trick", 1): 0.5})
    assert pick("x", work, [1], timer).chosen == "trick"


class TwoShapes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(16, 48, bias=False), nn.Linear(16, 48, bias=False)  # one shape, two layers
        self.b = nn.Linear(48, 16, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a1(x) + self.a2(x))


@pytest.mark.skipif(not mkldnn_available(), reason="oneDNN is not built into this torch")
def test_linear_packing_is_swapped_in_only_for_the_shapes_that_measured_faster() -> None:
    torch.manual_seed(0)
    model = TwoShapes().eval()
    x = torch.randn(5, 16)
    expected = model(x)
    timer = table_timer({("plain", 1): 1.0, ("plain", 4): 1.5, ("plain", 8): 2.0, ("packed", 1): 0.5,
                         ("packed", 4): 0.8, ("packed", 8): 1.0, ("kernel", 1): 2.0, ("kernel", 4): 3.0,
                         ("kernel", 8): 4.0})  # the C kernel, where it built, loses

    def by_shape(label: str, work) -> float:
        if label.startswith("linear 48->16"):  # the 48 -> 16 shape: packing (and the kernel) lose there
            work()
            return 1.0 if "/plain/" in label else 2.0
        return timer(label, work)

    choices = choose_linear_packing(model, batch_rows=8, timer=by_shape)
    assert {c.what: c.chosen for c in choices} == {"linear 16->48 x2": "packed", "linear 48->16 x1": "plain"}
    assert isinstance(model.a1, PackedLinear) and isinstance(model.a2, PackedLinear)
    assert type(model.b) is nn.Linear
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_decode_attention_path_is_chosen_per_batch_class() -> None:
    # grouped wins for one sequence, SDPA for a batch
    timer = table_timer({("sdpa", 1): 1.0, ("grouped", 1): 0.5, ("sdpa", 4): 1.0, ("grouped", 4): 3.0})
    paths = choose_decode_attention(4, 2, 8, torch.float32, batch_rows=4, context=12, timer=timer)
    assert paths == {1: "grouped", 2: "sdpa"}


def test_a_half_precision_model_may_choose_fp32_sdpa() -> None:
    timer = table_timer({("sdpa", 1): 1.0, ("grouped", 1): 0.9, ("sdpa_fp32", 1): 0.3,
                         ("sdpa", 4): 1.0, ("grouped", 4): 0.4, ("sdpa_fp32", 4): 0.8})
    assert choose_decode_attention(4, 2, 8, torch.bfloat16, batch_rows=4, context=12, timer=timer) == {
        1: "sdpa_fp32", 2: "grouped"}
    # an fp32 model has no such candidate: a timer that knows none of its labels would fail
    assert choose_decode_attention(4, 2, 8, torch.float32, batch_rows=4, context=12, timer=table_timer(
        {("sdpa", 1): 1.0, ("grouped", 1): 2.0, ("sdpa", 4): 1.0, ("grouped", 4): 2.0})) == {1: "sdpa", 2: "sdpa"}


@pytest.mark.parametrize("paths", [{1: "sdpa", 2: "sdpa"}, {1: "grouped", 2: "grouped"},
                                   {1: "sdpa_fp32", 2: "sdpa_fp32"}])
def test_each_decode_path_attends_like_sdpa_over_the_paged_cache(paths: dict[int, str]) -> None:
    """One and three decoding sequences through Attention._paged, against SDPA on the dense K/V."""
    from model.layers.attention import Attention, AttentionMetadata

    torch.manual_seed(0)
    h, kvh, d, bs, num_blocks = 4, 2, 8, 4, 12
    attn = Attention(h * d, h, kvh, d, bias=False, rotary=nn.Identity())
    attn.decode_paths = paths
    attn.kv_cache = torch.randn(2, num_blocks, bs, kvh, d)
    tables = [[3, 7, 1], [0, 5, 0], [9, 2, 11]]
    lens = [10, 6, 12]  # after this step's token
    for b in (1, 3):
        q = torch.randn(b, h, d)
        k_new, v_new = torch.randn(b, kvh, d), torch.randn(b, kvh, d)
        slots = torch.tensor([tables[i][(lens[i] - 1) // bs] * bs + (lens[i] - 1) % bs for i in range(b)])
        meta = AttentionMetadata(slot_mapping=slots, decode_block_tables=torch.tensor(tables[:b]),
                                 decode_context_len=max(lens[:b]))
        if b > 1:
            ar = torch.arange(3 * bs)
            meta.decode_mask = (ar[None] < torch.tensor(lens[:b])[:, None]).view(b, 1, 1, -1)
        got = attn._paged(q, k_new, v_new, meta)
        for i in range(b):
            kv = attn.kv_cache[:, tables[i]].flatten(1, 2)[:, :lens[i]]  # (2, L, KVH, D), new token included
            ref = F.scaled_dot_product_attention(q[i][None, :, None], kv[0].transpose(0, 1)[None],
                                                 kv[1].transpose(0, 1)[None], scale=attn.scale, enable_gqa=True)
            torch.testing.assert_close(got[i], ref[0, :, 0], rtol=1e-5, atol=1e-5)


def by_rows(kernel: dict[int, float], plain: dict[int, float], packed: dict[int, float]):
    table = {**{("kernel", r): t for r, t in kernel.items()}, **{("plain", r): t for r, t in plain.items()},
             **{("packed", r): t for r, t in packed.items()}}
    return table_timer(table)


@pytest.mark.skipif(not mkldnn_available(), reason="oneDNN is not built into this torch")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_kernel_serves_the_small_batches_it_won_and_a_packed_copy_the_rest(dtype: torch.dtype) -> None:
    """Timings shaped like a host whose oneDNN multiplies bf16 on AMX: the kernel wins at 1 and 4 rows, loses
    from 8. The kernel keeps the rows it won on the model's own weight; past them a packed copy (or F.linear,
    where the copies would pass DUAL_COPY_BYTES) computes the same product."""
    from model.kernels import linear as kl
    if not kl.available():
        pytest.skip("the linear kernel did not build here")
    torch.manual_seed(0)
    model = TwoShapes().eval().to(dtype)
    weight = model.a1.weight
    timer = by_rows(kernel={1: 0.3, 4: 0.5, 8: 2.0, 16: 4.0, 32: 6.0}, plain={1: 1.0, 4: 1.0, 8: 1.5, 16: 2.5, 32: 4.0},
                    packed={1: 0.8, 4: 0.8, 8: 1.0, 16: 1.5, 32: 2.0})
    choices = choose_linear_packing(model, batch_rows=32, timer=timer)
    assert sorted(set(r for _, r in timer.calls)) == [1, 4, 8, 16, 32]
    by_what = {c.what.split()[1]: c for c in choices}
    assert by_what["16->48"].chosen == "kernel+packed" and by_what["16->48"].kernel_rows == 4
    assert "kernel to 4 rows, packed past" in by_what["16->48"].describe()
    a1 = model.a1
    assert type(a1) is kl.KernelLinear and a1.max_rows == 4 and isinstance(a1.above, PackedLinear)
    assert a1.weight is weight  # the kernel's rows read the model's own weight
    x = torch.randn(12, 16).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        for rows in (1, 4, 12):  # the kernel's rows, its limit, the copy's rows: one product
            torch.testing.assert_close(a1(x[:rows]), F.linear(x[:rows], weight), rtol=tol, atol=tol)


@pytest.mark.skipif(not mkldnn_available(), reason="oneDNN is not built into this torch")
def test_past_the_copy_budget_the_kernels_large_batches_take_f_linear(monkeypatch) -> None:
    from model.kernels import linear as kl
    if not kl.available():
        pytest.skip("the linear kernel did not build here")
    monkeypatch.setattr(cpu_choices, "DUAL_COPY_BYTES", 0)
    model = TwoShapes().eval()
    timer = by_rows(kernel={1: 0.3, 4: 0.5, 8: 2.0}, plain={1: 1.0, 4: 1.0, 8: 1.5}, packed={1: 0.8, 4: 0.8, 8: 1.0})
    choices = choose_linear_packing(model, batch_rows=8, timer=timer)
    assert {c.chosen for c in choices} == {"kernel+plain"}
    assert model.a1.max_rows == 4 and model.a1.above is None and model.b.above is None


def test_the_kernels_row_limit_is_the_prefix_of_row_counts_it_won_by_the_margin() -> None:
    def choice(kernel: list[float], plain: list[float], packed: list[float]) -> cpu_choices.Choice:
        rows = [1, 4, 8, 32]
        return cpu_choices.Choice("x", "plain", {"plain": dict(zip(rows, plain)), "packed": dict(zip(rows, packed)),
                                                 "kernel": dict(zip(rows, kernel))})
    assert cpu_choices.kernel_row_limit(choice([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3])) == 32
    assert cpu_choices.kernel_row_limit(choice([1, 1, 3, 1], [2, 2, 2, 2], [3, 3, 3, 3])) == 4  # a prefix only
    assert cpu_choices.kernel_row_limit(choice([1, 2.5, 1, 1], [2, 2, 2, 2], [3, 2, 3, 3])) == 1
    assert cpu_choices.kernel_row_limit(choice([0.99, 1, 1, 1], [1, 2, 2, 2], [3, 3, 3, 3])) == 0  # inside the margin
    assert cpu_choices.linear_row_counts(32) == [1, 4, 8, 16, 32] and cpu_choices.linear_row_counts(8) == [1, 4, 8]
    assert cpu_choices.linear_row_counts(1) == [1]

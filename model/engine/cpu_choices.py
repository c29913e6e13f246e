"""Host-dependent CPU speed tricks, decided at start-up by timing them on the model's own shapes.

Whether a trick pays depends on the host, not on the code: oneDNN-packed weights ran the 30 gate_up
products of a 1-row decode in 5.1 ms against 13.3 ms plain on a host with a 300 MB L3, and in 16.1 ms
against 14.3 ms on one with 32 MB. So nothing is assumed: each candidate runs over the model's real
layers (all of a shape's layers in a row, so weights stream from memory as in a decode step, not from
cache) at 1 row and at a full decode batch (a linear's candidates also at 4, 8 and 16 rows, where the C
kernel may stop winning), and a trick is kept only where it beats the plain path by MARGIN on those together. Each choice is logged with its timings. The timer is injectable so the
choosing logic is tested on given timings, not on the test machine's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from model.engine.cpu_packing import PackedLinear
from model.preflight import available_memory

log = logging.getLogger("glmserve.engine")

MARGIN = 0.05  # a trick must be >= 5% faster than the plain path, so noise never turns one on
ROUNDS = 4  # timed calls per candidate, interleaved, after one untimed warm-up round
RETRIES = 2  # measurements again (each call's best kept) while the timings contradict themselves
INCONSISTENT = 3.0  # a loss this many times the plain path's time beside a win elsewhere: not the kernel's speed
Timer = Callable[[str, Callable[[], object]], float]  # (label, work) -> seconds of one call


def one_call(label: str, work: Callable[[], object]) -> float:
    """The default timer: the wall time of one call."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@dataclass
class Choice:
    """The outcome of one measurement: per candidate, seconds per row count; the plain path first."""

    what: str
    chosen: str
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    kernel_rows: int = 0  # a linear's "kernel+<kind>": the C kernel serves up to this many rows, <kind> past it

    def describe(self) -> str:
        parts = [f"{kind} " + "/".join(f"{s * 1e3:.2f}" for s in by_rows.values()) + " ms"
                 for kind, by_rows in self.seconds.items()]
        rows = "/".join(str(r) for r in next(iter(self.seconds.values())))
        chosen = self.chosen
        if self.kernel_rows:
            chosen = f"kernel to {self.kernel_rows} rows, {chosen.removeprefix('kernel+')} past"
        return f"{self.what}: {chosen} ({', '.join(parts)} at {rows} rows)"


def pick(what: str, candidates: dict[str, Callable[[int], Callable[[], object]]], row_counts: list[int],
         timer: Timer = one_call) -> Choice:
    """candidates: kind -> (rows -> work); the first kind is the plain path. Each candidate's time is the
    best of ROUNDS calls, the candidates interleaved call by call after a warm-up round (oneDNN builds its
    primitives), so a neighbour process that takes a core for a while slows all of them alike. Each kind's
    score is its mean time ratio to the plain path over row_counts (each row count weighs the same,
    however long it takes); the best kind wins if it beats the plain path by MARGIN, else plain stays. A
    measurement that contradicts itself (a candidate winning at one row count and losing by INCONSISTENT x at
    another: a neighbour's burst, seen when two servers started at once) is repeated, up to RETRIES times, each
    call's best time kept across the repeats.

    Measured once per process and label: a second engine in the process (tests, a reload) reuses the first's
    choice, so two engines never differ in their kernels, and their roundings, by a noisy timing."""
    key = (what, tuple(candidates))
    if timer is one_call and key in _DECIDED:
        return _DECIDED[key]
    seconds: dict[str, dict[int, float]] = {kind: {} for kind in candidates}
    plain = next(iter(seconds))
    for attempt in range(1 + RETRIES):
        for rows in row_counts:
            works = {kind: make(rows) for kind, make in candidates.items()}
            for work in works.values():
                work()
            for _ in range(ROUNDS):
                for kind, work in works.items():
                    elapsed = timer(f"{what}/{kind}/{rows}", work)
                    seconds[kind][rows] = min(seconds[kind].get(rows, float("inf")), elapsed)
        if not _contradicts_itself(seconds, plain, row_counts):
            break
        if attempt < RETRIES:
            log.info("cpu choice: %s timed inconsistently (a busy host?): measuring again", what)
    score = {kind: sum(s[r] / seconds[plain][r] for r in row_counts) / len(row_counts) for kind, s in seconds.items()}
    best = min(score, key=score.get)
    choice = Choice(what, best if score[best] < 1.0 - MARGIN else plain, seconds)
    if timer is one_call:
        _DECIDED[key] = choice
    return choice


def _contradicts_itself(seconds: dict[str, dict[int, float]], plain: str, row_counts: list[int]) -> bool:
    """A candidate that wins at one row count and loses by INCONSISTENT x at another: a kernel's speed does not
    swing so far between row counts, a neighbour's burst does (a busy core stalls a 2-thread kernel's barrier for a
    whole time slice while the plain path's small single-threaded ops barely notice)."""
    for kind, by_rows in seconds.items():
        ratios = [by_rows[r] / seconds[plain][r] for r in row_counts if seconds[plain][r] > 0]
        if kind != plain and ratios and min(ratios) < 1.0 - MARGIN and max(ratios) > INCONSISTENT:
            return True
    return False


_DECIDED: dict[tuple[str, tuple[str, ...]], Choice] = {}  # pick's choices in this process, by label and kinds


TIMING_BYTES = 256 << 20  # weights of one shape packed for timing at once


def _linear_groups(model: nn.Module) -> dict[tuple[int, int], list[tuple[nn.Module, str, nn.Linear]]]:
    """The model's CPU nn.Linear modules by (in_features, out_features): (parent, attribute, module)."""
    groups: dict[tuple[int, int], list] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.Linear and child.weight.device.type == "cpu" and id(child) not in seen:
                seen.add(id(child))
                groups.setdefault((child.in_features, child.out_features), []).append((module, name, child))
    return groups


KERNEL_ROW_COUNTS = (4, 8, 16)  # row counts timed between 1 and a full batch: where the C kernel stops winning
# A packed copy beside the plain weight the kernel reads (for the rows past the kernel's limit) holds the shape's
# weights twice: kept while all such copies stay under this and under a quarter of the memory still available
# (the default model's bf16 projections are 211 MB; a 6 B model's 12 GB twice would not fit a 24 GB host, and the
# memory preflight counted each weight once), F.linear on the plain weight beyond it.
DUAL_COPY_BYTES = 1 << 30


def linear_row_counts(batch_rows: int) -> list[int]:
    """The row counts a projection's candidates are timed at: 1, a full decode batch and KERNEL_ROW_COUNTS
    between, so the row count where the C kernel stops winning is found."""
    return sorted({1, batch_rows} | {r for r in KERNEL_ROW_COUNTS if r < batch_rows})


def kernel_row_limit(choice: Choice) -> int:
    """The largest timed row count up to which the kernel was the fastest candidate at every timed count, and
    faster than the plain path by MARGIN, or 0."""
    limit = 0
    for rows, kernel in choice.seconds["kernel"].items():
        if (kernel >= (1.0 - MARGIN) * choice.seconds["plain"][rows]
                or any(by_rows[rows] < kernel for kind, by_rows in choice.seconds.items() if kind != "kernel")):
            break
        limit = rows
    return limit


@torch.inference_mode()
def choose_linear_packing(model: nn.Module, batch_rows: int, timer: Timer = one_call,
                          kernel_for: tuple[nn.Module, ...] = ()) -> list[Choice]:
    """Per weight shape, keeps nn.Linear, swaps in oneDNN-packed copies, or the C kernel on the plain weight
    (model/kernels/linear.py), whichever measured faster; or the kernel up to the row count where it stopped
    winning and the better of the others past it (on a host whose oneDNN multiplies bf16 on AMX, the kernel won
    the default model's shapes at 1-4 rows by 1.5-2.3x and lost at 32 by 2.5x: `Choice.kernel_rows`). The packed
    copy beside the kernel's weight is kept within DUAL_COPY_BYTES and a quarter of the available memory, else
    F.linear serves those rows.

    A shape with a module of `kernel_for` keeps the kernel for at least one row: the runner's greedy screen
    (model/engine/greedy_screen.py) computes a few of the lm_head's rows alone and needs the full product at
    those row counts to be the same arithmetic, row for row; the runner caps the screen's rows at the head's
    kernel limit."""
    from model.kernels import linear as kernel

    choices = []
    row_counts = linear_row_counts(batch_rows)
    dual_bytes, spare = 0, None  # the copies' bytes so far; a quarter of the memory available (read when needed)
    for (fan_in, fan_out), members in _linear_groups(model).items():
        screened = any(lin in kernel_for for _, _, lin in members)
        # timed on as many members as fit TIMING_BYTES (still far beyond any cache, so the products stream
        # their weights as in a step): packing every member just to time it held a second copy of all the
        # model's projections at once (+2.4 GB at start-up on a 1 B model)
        per_weight = members[0][2].weight.numel() * members[0][2].weight.element_size()
        timed = members[: max(1, min(len(members), TIMING_BYTES // max(1, per_weight)))]
        plain = [lin for _, _, lin in timed]
        dtype = plain[0].weight.dtype
        kernels = ([kernel.KernelLinear(lin) for lin in plain]
                   if dtype in kernel.DTYPES and kernel.available() else [])
        if screened and not kernels:
            log.info("cpu choice: linear %d->%d stays plain (the kernel does not take its weight)", fan_in, fan_out)
            continue
        # a vocabulary-sized lm_head: a packed copy would double it at start-up; the kernel needs no copy
        packs = per_weight <= TIMING_BYTES
        packed = [PackedLinear(lin) for lin in plain] if packs else []
        if not packs and not kernels:
            log.info("cpu choice: linear %d->%d stays plain (%.0f MB: too large to copy for a trial)", fan_in,
                     fan_out, per_weight / 1e6)
            continue

        def run_all(mods: list[nn.Module]) -> Callable[[int], Callable[[], object]]:
            def make(rows: int) -> Callable[[], object]:
                x = torch.randn(rows, fan_in).to(dtype)
                return lambda: [m(x) for m in mods]
            return make

        candidates = {"plain": run_all(plain)}
        if packs:
            candidates["packed"] = run_all(packed)
        if kernels:
            candidates["kernel"] = run_all(kernels)
        # the dtype in the label: pick decides once per label in a process, and a bf16 model's choice is its own
        label = f"linear {fan_in}->{fan_out} x{len(members)}" + ("" if dtype == torch.float32 else
                                                                  f" {str(dtype).removeprefix('torch.')}")
        # a copy: pick keeps its choices for the process, and this one may become a "kernel+" split
        choice = replace(pick(label, candidates, row_counts, timer))
        del plain, timed, kernels
        # the counts it was measured at (an earlier engine in the process may have had another batch size)
        measured = list(choice.seconds["plain"])
        limit = kernel_row_limit(choice) if "kernel" in candidates else 0
        if screened:
            limit = max(limit, 1)
        if limit and limit < measured[-1]:
            # the kernel to `limit` rows, past it whichever of the others did best on the larger counts
            larger = [r for r in measured if r > limit]
            ratio = {kind: sum(choice.seconds[kind][r] / choice.seconds["plain"][r] for r in larger) / len(larger)
                     for kind in candidates if kind != "kernel"}
            if spare is None:
                spare = available_memory("cpu")[0] // 4
            fits = dual_bytes + per_weight * len(members) <= min(DUAL_COPY_BYTES, spare)
            above = "packed" if "packed" in ratio and ratio["packed"] < 1.0 - MARGIN and fits else "plain"
            choice.chosen, choice.kernel_rows = f"kernel+{above}", limit
            if above == "packed":
                dual_bytes += per_weight * len(members)
            for parent, name, lin in members:
                copy = (packed.pop(0) if packed else PackedLinear(lin)) if above == "packed" else None
                setattr(parent, name, kernel.KernelLinear(lin, max_rows=limit, above=copy))
        elif choice.chosen == "kernel" or screened:  # the same Parameters: nothing copied, a tied head stays tied
            choice.chosen = "kernel"
            for parent, name, lin in members:
                setattr(parent, name, kernel.KernelLinear(lin))
        elif choice.chosen == "packed":
            # one at a time, each taken off these lists as it goes, so a plain weight is freed as its packed
            # copy comes (holding them all to the end kept a whole group twice: +1 GB on a 1 B model)
            while members:
                parent, name, lin = members.pop(0)
                setattr(parent, name, packed.pop(0) if packed else PackedLinear(lin))
                del lin
        del packed
        log.info("cpu choice: %s", choice.describe())
        choices.append(choice)
    return choices


@torch.inference_mode()
def choose_decode_attention(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, batch_rows: int,
                            context: int = 256, timer: Timer = one_call, like: nn.Module | None = None
                            ) -> dict[int, str]:
    """The decode attention path per batch class: 1 -> kind for one sequence, 2 -> kind for more.
    'sdpa' (PyTorch's fused kernel) is the plain path; 'grouped' is attention.grouped_decode; for a
    bf16/fp16 model also 'sdpa_fp32' (attention.fp32_sdpa_decode, SDPA on fp32 copies of q/K/V): this CPU's
    fp32 SDPA kernel took 43 us for one sequence x 128 tokens of the default model, its bf16 one 142 us (and
    grouped in bf16 178 us), an 8% share of a bf16 batch-1 step; for 32 sequences grouped in bf16 won (463 us,
    fp32 SDPA 584). 'kernel' (the C kernel, model/kernels/attention.py) where the model's layer `like`
    supports it.

    Each candidate is timed on what it does in a pure decode step, between the qkv and o projections of
    one layer (Attention.attend): RoPE, the cache write, the block gather and SDPA for the PyTorch paths,
    the one fused call for the kernel, over a paged cache with scattered blocks. (Timing SDPA alone on
    pre-gathered K/V left out the gather, most of a 32-sequence step's attention.) `like`'s RoPE module is
    used where given."""
    from model.config import RopeConfig
    from model.layers.attention import Attention, pure_decode_metadata
    from model.layers.rotary import RotaryEmbedding

    rotary = like.rotary if like is not None else RotaryEmbedding(RopeConfig(), head_dim, context)
    context = min(context, rotary.cos_cache.shape[0]) if hasattr(rotary, "cos_cache") else context
    block_size = 16

    def step(kind: str, rows: int) -> Callable[[], object]:
        # a layer with 1-wide projections (never run: attend() starts from their output)
        attn = Attention(1, num_heads, num_kv_heads, head_dim, bias=False, rotary=rotary)
        attn.decode_paths = {1: kind, 2: kind}
        per_seq = -(-context // block_size)
        num_blocks = rows * per_seq + 1
        attn.kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
        tables = torch.randperm(num_blocks)[:rows * per_seq].view(rows, per_seq)  # scattered, as in a step
        meta = pure_decode_metadata(tables, context, block_size)
        positions = meta.decode_context_lens - 1
        qkv = torch.randn(rows, (num_heads + 2 * num_kv_heads) * head_dim).to(dtype)
        return lambda: attn.attend(qkv, positions, meta)

    kinds = ["sdpa", "grouped"]
    if dtype != torch.float32:
        kinds.append("sdpa_fp32")
    if like is not None and like.supports_decode_kernel():
        kinds.append("kernel")
    candidates = {kind: (lambda rows, kind=kind: step(kind, rows)) for kind in kinds}
    paths = {}
    for rows, key in ((1, 1), (max(2, batch_rows), 2)):
        choice = pick(f"decode attention {str(dtype).removeprefix('torch.')} {rows} seqs x {context}",
                      candidates, [rows], timer)
        log.info("cpu choice: %s", choice.describe())
        paths[key] = choice.chosen
    return paths


@torch.inference_mode()
def choose_quant_kernels(model: nn.Module, batch_rows: int, timer: Timer = one_call) -> list[Choice]:
    """Per int8 / int4 weight shape, PyTorch's bf16 kernel or the C kernel with fp32 activations
    (model/kernels/qlinear.py), timed at 1 row and at a full decode batch on the model's own layers (as many
    as fit TIMING_BYTES, so weights stream from memory as in a step). For fp32 models: the C kernels take
    fp32 activations. Sets `cpu_kernel` on every module of a shape that chose the kernel."""
    from model.kernels import qlinear
    from model.quant.modules import Int4Linear, Int8Linear

    if not qlinear.available():
        return []
    groups: dict[tuple[str, int, int], list[nn.Module]] = {}
    for module in model.modules():
        if type(module) is Int8Linear and module.weight.device.type == "cpu":
            groups.setdefault(("int8", module.in_features, module.out_features), []).append(module)
        elif (type(module) is Int4Linear and module.packed.device.type == "cpu"
              and qlinear.int4_supported(module.out_features, module.in_features, module.group_size)):
            groups.setdefault((f"int4 g{module.group_size}", module.in_features, module.out_features),
                              []).append(module)
    choices = []
    for (kind, fan_in, fan_out), members in groups.items():
        per_module = fan_in * fan_out // (1 if kind == "int8" else 2)
        timed = members[: max(1, min(len(members), TIMING_BYTES // max(1, per_module)))]

        def run_all(kernel: bool) -> Callable[[int], Callable[[], object]]:
            def make(rows: int) -> Callable[[], object]:
                x = torch.randn(rows, fan_in)

                def work() -> None:
                    for m in timed:
                        m.cpu_kernel = kernel
                        m(x)
                return work
            return make

        choice = pick(f"{kind} linear {fan_in}->{fan_out} x{len(members)}", {"torch": run_all(False),
                                                                              "kernel": run_all(True)},
                      sorted({1, batch_rows}), timer)
        for m in members:
            m.cpu_kernel = choice.chosen == "kernel"
        log.info("cpu choice: %s", choice.describe())
        choices.append(choice)
    return choices


@torch.inference_mode()
def choose_fused_decoder(model: nn.Module, make_step: Callable[[int], tuple], batch_rows: int,
                         timer: Timer = one_call):
    """The decoder layers of a pure decode step as one C call (model/kernels/decode.py) or as modules.

    The per-shape choices above time each kernel alone; in the fused call a kernel also saves the Python
    around it (~150 us a layer), which those timings cannot see, so an int4 shape that loses to PyTorch's
    kernel by 10% alone may still belong in a faster step. So this times whole steps: the modules as chosen,
    against every int8/int4 projection on its C kernel with the layers in one call (make_step(rows) gives a
    synthetic decode step's (input_ids, positions, metadata) over scratch cache blocks). Returns the
    FusedDecoder when it won by MARGIN (the quantized linears left on their C kernels), else None with every
    choice as it was."""
    from model.kernels import pointwise, qlinear
    from model.kernels.decode import FusedDecoder
    from model.quant.modules import Int4Linear, Int8Linear

    quant = [m for m in model.modules()
             if (type(m) is Int8Linear and qlinear.available())
             or (type(m) is Int4Linear and qlinear.int4_supported(m.out_features, m.in_features, m.group_size))]
    mlps = [m for m in model.modules() if type(m) is pointwise.KernelGatedMLP]
    chosen = ([m.cpu_kernel for m in quant], [m.bf16_linears for m in mlps])

    def setting(fused: bool) -> None:
        for m, flag in zip(quant, chosen[0]):
            m.cpu_kernel = True if fused else flag
        for m, flag in zip(mlps, chosen[1]):
            m.bf16_linears = False if fused else flag

    setting(True)
    fused = FusedDecoder.build(model)
    setting(False)
    if fused is None:
        return None

    def modules(rows: int) -> Callable[[], object]:
        ids, positions, meta = make_step(rows)
        return lambda: (setting(False), model(ids, positions, meta))

    def one_call_step(rows: int) -> Callable[[], object]:
        ids, positions, meta = make_step(rows)
        return lambda: (setting(True), fused.forward(ids, positions, meta))

    # the label names what differs between models of one process (pick decides once per label): the dtype and
    # the projections' kinds, so an int4 engine never reuses an fp32 engine's decision
    kinds = "+".join(sorted({type(m).__name__ for m in quant})) or "float"
    dtype = str(fused.dtype).removeprefix("torch.")
    what = f"decoder layers x{len(model.layers)} {dtype} {kinds} x {model.config.hidden_size}"
    choice = pick(what, {"modules": modules, "fused": one_call_step}, sorted({1, batch_rows}), timer)
    log.info("cpu choice: %s", choice.describe())
    setting(choice.chosen == "fused")
    return fused if choice.chosen == "fused" else None


SCREEN_ROW_COUNTS = (1, 2, 4, 8, 16, 32)


@torch.inference_mode()
def choose_greedy_screen_rows(screen, batch_rows: int, timer: Timer = one_call) -> int:
    """The most rows a step may have for the greedy screen (model/engine/greedy_screen.py) to take it: at one
    row the int8 copy halves or quarters the lm_head's bytes, but its product is compute-bound well before 32
    rows (bf16 here: 8.7 ms at 32 rows against the bf16 kernel's 5.5), so each row count up to batch_rows is
    timed, the screen's int8 product and candidate pass against the full product, and the screen serves the
    row counts below the first one where it did not win. 0: never."""
    head = screen.lm_head
    table = head.weight
    limit = 0
    for rows in [r for r in SCREEN_ROW_COUNTS if r <= batch_rows]:
        # embedding rows as hidden states: real directions, so the candidate pass sees a usual spread
        x = table[torch.arange(rows) * 7 % table.shape[0]].contiguous()
        xf = x.float()
        choice = pick(f"greedy screen {str(table.dtype)[6:]} x{rows}",
                      {"full": lambda _: lambda: head(x).float(), "screen": lambda _: lambda: screen.screen_pass(xf)},
                      [rows], timer)
        log.info("cpu choice: %s", choice.describe())
        if choice.chosen != "screen":
            break
        limit = rows
    return limit

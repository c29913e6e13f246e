"""How many CPU threads the engine's torch ops use: the CPUs this process may actually run on.

torch's default is the machine's core count. In a container limited by a CPU quota (docker --cpus,
a Kubernetes CPU limit) or pinned to a few cores (taskset, cpusets), that oversubscribes: threads wait
for quota and every matmul's slowest thread sets the step time. So the count follows, in order:
an explicit `--num-threads`, else min(the affinity mask, ceil(cgroup quota / period)).

Without `--num-threads`, ThreadTuner then re-decides the count while serving: a neighbour process that
holds a core makes every op's parallel region wait for its descheduled thread (the default model at
batch 1: 2 threads 27.5 -> 7.8 tok/s beside one busy process, 1 thread 18.9 -> 17.0; at 32 rows 357 -> 108
and 191 -> 176; `python -m benchmarks.bench_neighbor`), so no fixed count wins on both a quiet and a
shared host. Every few seconds of stepping it times a few steps at each candidate count, interleaved,
and keeps the fastest. Thread counts do not change results here (each op splits independent outputs
across threads; checked bit for bit on the default model), so a probe never changes a token.
"""
from __future__ import annotations

import logging
import math
import os
import statistics
from pathlib import Path
from typing import Callable

log = logging.getLogger("glmserve.engine")

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
                     v1_period: Path = CGROUP_V1_PERIOD) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), or None when there is no quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]  # "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        return None


def available_cpus(quota: float | None = None, affinity: int | None = None) -> int:
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = affinity
    if quota is not None:
        limit = min(limit, max(1, math.ceil(quota)))
    return max(1, limit)


def choose_num_threads(requested: int | None) -> tuple[int, str]:
    """(threads, why) for the engine."""
    if requested:
        return requested, "--num-threads"
    quota = cgroup_cpu_limit()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = available_cpus(quota, affinity)
    why = f"affinity {affinity} CPUs" + (f", cgroup quota {quota:g} CPUs" if quota is not None else "")
    return threads, why


def apply_num_threads(requested: int | None) -> int:
    import torch

    threads, why = choose_num_threads(requested)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    log.info("engine uses %d torch threads (%s)", threads, why)
    return threads


class ThreadTuner:
    """Chooses the engine thread's torch thread count from measured step times (see the module doc).

    The engine calls before_step() and after_step(seconds, tokens) around each step. After `period_s` of
    stepping at the current count it probes: `probe_rounds` rounds of one step at each candidate count
    (interleaved, so a change of load falls on all alike), then keeps the count with the lowest median
    seconds per computed token, unless it beats the current one by less than `margin`.

    A probe that keeps the count doubles the wait before the next one, up to `max_period_s`; a change
    resets it. A probe's slower steps cost about 3% of a quiet host's 32-stream throughput every 10 s
    (4 one-thread steps at ~170 ms against ~90), so a steady host pays that only until the wait grows,
    while a neighbour that arrives is noticed within `max_period_s`."""

    def __init__(self, max_threads: int, period_s: float = 10.0, probe_rounds: int = 4, margin: float = 0.1,
                 set_threads: Callable[[int], None] | None = None, max_period_s: float = 40.0) -> None:
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.set_threads = set_threads
        self.candidates = sorted({max_threads, max(1, max_threads - 1), 1}, reverse=True)
        self.current = max_threads
        self.period_s, self.probe_rounds, self.margin = period_s, probe_rounds, margin
        self.base_period_s, self.max_period_s = period_s, max(period_s, max_period_s)
        self.stepped_s = 0.0  # stepping time at `current` since the last probe
        self.probe: list[int] = []  # thread counts of the probe's remaining steps
        self.samples: dict[int, list[float]] = {}
        self.probing_with: int | None = None
        self.applied: int | None = None  # the count last set (on the engine's own thread)
        self.num_probes = 0

    def before_step(self) -> None:
        if not self.probe and self.stepped_s >= self.period_s:
            self.probe = [c for _ in range(self.probe_rounds) for c in self.candidates]
            self.samples = {c: [] for c in self.candidates}
        self.probing_with = self.probe.pop(0) if self.probe else None
        self._use(self.probing_with or self.current)

    def after_step(self, seconds: float, tokens: int) -> None:
        if self.probing_with is None:
            self.stepped_s += seconds
            return
        self.samples[self.probing_with].append(seconds / max(1, tokens))
        if not self.probe:
            self._decide()

    def _decide(self) -> None:
        per_token = {c: statistics.median(v) for c, v in self.samples.items() if v}
        best = min(per_token, key=per_token.get)
        chosen = best if per_token[best] < per_token[self.current] * (1 - self.margin) else self.current
        if chosen != self.current:
            log.info("engine threads %d -> %d: %s ms per token at %s threads (another process is using the CPUs, "
                     "or it left)", self.current, chosen,
                     "/".join(f"{per_token[c] * 1e3:.2f}" for c in self.candidates),
                     "/".join(str(c) for c in self.candidates))
        if chosen == self.current:  # steady: probe less often
            self.period_s = min(self.max_period_s, self.period_s * 2)
        else:
            self.period_s = self.base_period_s
        self.current, self.stepped_s, self.probing_with = chosen, 0.0, None
        self.num_probes += 1
        self._use(chosen)

    def _use(self, threads: int) -> None:
        if threads != self.applied:
            self.set_threads(threads)
            self.applied = threads


def thread_tuner_for(requested: int | None, device_type: str, enabled: bool) -> ThreadTuner | None:
    """A tuner when the count was not fixed by --num-threads and there is more than one CPU to use."""
    if requested or device_type != "cpu" or not enabled:
        return None
    threads, _ = choose_num_threads(None)
    return ThreadTuner(threads) if threads > 1 else None

"""How many CPU threads the engine's torch ops use: the CPUs this process may actually run on.

torch's default is the machine's core count. In a container limited by a CPU quota (docker --cpus,
a Kubernetes CPU limit) or pinned to a few cores (taskset, cpusets), that oversubscribes: threads wait
for quota and every matmul's slowest thread sets the step time. So the count follows, in order:
an explicit `--num-threads`, else min(the affinity mask, ceil(cgroup quota / period)).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

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

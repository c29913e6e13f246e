"""The engine's thread count follows the CPUs the process may use (cgroup quota, affinity), not the host."""
from __future__ import annotations

from pathlib import Path

from model.engine.cpu_threads import available_cpus, cgroup_cpu_limit, choose_num_threads


def test_cgroup_v2_quota_and_unlimited(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_limit(cpu_max, tmp_path / "none", tmp_path / "none") == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max, tmp_path / "none", tmp_path / "none") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "quota").write_text("200000\n")
    (tmp_path / "period").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "quota", tmp_path / "period") == 2.0
    (tmp_path / "quota").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "quota", tmp_path / "period") is None


def test_threads_are_the_smaller_of_quota_and_affinity() -> None:
    assert available_cpus(quota=1.5, affinity=16) == 2  # a fractional quota still gets a thread for the part
    assert available_cpus(quota=0.2, affinity=16) == 1
    assert available_cpus(quota=None, affinity=4) == 4
    assert available_cpus(quota=8, affinity=2) == 2


def test_explicit_num_threads_wins() -> None:
    assert choose_num_threads(3) == (3, "--num-threads")
    threads, why = choose_num_threads(None)
    assert threads >= 1 and "affinity" in why

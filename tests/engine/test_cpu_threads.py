"""The engine's thread count follows the CPUs the process may use (cgroup quota, affinity), not the host,
and, while serving, the measured speed of each count (ThreadTuner, driven here by synthetic step times)."""
from __future__ import annotations

from pathlib import Path

from model.engine.cpu_threads import ThreadTuner, available_cpus, cgroup_cpu_limit, choose_num_threads, thread_tuner_for


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


def drive(tuner: ThreadTuner, per_token_s: dict[int, float], steps: int, tokens: int = 32) -> list[int]:
    """Runs `steps` steps whose time depends on the thread count in use; returns the count of each step."""
    tuner.set_threads = lambda n: None  # the count in force is tuner.applied
    counts = []
    for _ in range(steps):
        tuner.before_step()
        threads = tuner.applied
        counts.append(threads)
        tuner.after_step(per_token_s[threads] * tokens, tokens)
    return counts


def test_a_neighbour_that_slows_two_threads_moves_the_engine_to_one_and_back() -> None:
    tuner = ThreadTuner(2, period_s=1.0, probe_rounds=3)
    quiet = {2: 0.001, 1: 0.0017}  # 2 threads faster alone
    counts = drive(tuner, quiet, steps=60)
    assert tuner.num_probes >= 1 and tuner.current == 2
    assert counts.count(1) == 3 * tuner.num_probes  # only the probes' steps ran at 1 thread
    drive(tuner, {2: 0.004, 1: 0.0018}, steps=60)  # a busy process arrives: 2 spinning threads wait
    assert tuner.current == 1
    drive(tuner, quiet, steps=200)  # it leaves
    assert tuner.current == 2


def test_a_gain_within_the_margin_keeps_the_current_count() -> None:
    tuner = ThreadTuner(2, period_s=0.5, probe_rounds=2, margin=0.1)
    drive(tuner, {2: 0.001, 1: 0.00095}, steps=100)  # 1 thread 5% faster: not worth a switch
    assert tuner.num_probes >= 2 and tuner.current == 2


def test_a_steady_host_is_probed_less_often_and_a_change_resets_the_wait() -> None:
    tuner = ThreadTuner(2, period_s=1.0, probe_rounds=2, max_period_s=4.0)
    quiet = {2: 0.001, 1: 0.0017}
    drive(tuner, quiet, steps=400)  # 32 tokens a step: 32 ms a step at 2 threads
    assert tuner.num_probes >= 3 and tuner.period_s == 4.0  # 1 -> 2 -> 4, capped
    busy = {2: 0.004, 1: 0.0018}  # a neighbour arrives: noticed within the longest wait (4 s = 32 steps)
    steps = 0
    while tuner.current == 2 and steps < 60:
        drive(tuner, busy, steps=1)
        steps += 1
    assert tuner.current == 1 and tuner.period_s == 1.0  # the change reset the wait


def test_no_tuner_with_an_explicit_count_one_cpu_or_another_device() -> None:
    assert thread_tuner_for(2, "cpu", True) is None
    assert thread_tuner_for(None, "cuda", True) is None
    assert thread_tuner_for(None, "cpu", False) is None
    assert ThreadTuner(4).candidates == [4, 3, 1]

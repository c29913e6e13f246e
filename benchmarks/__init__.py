"""Benchmark scripts (not shipped in the wheel): each docstring shows its command; figures live in docs/BENCHMARKS.md."""

"""The kernel loader (model/kernels/build.py): compiles once into its cache and reuses the file, keys the file
by source, compiler and CPU, and returns None (the PyTorch paths) when the kernels are off, no compiler
exists, or compiling fails."""
from __future__ import annotations

import logging

import pytest

from model.kernels import build


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("GLMSERVE_KERNEL_CACHE", str(tmp_path / "cache"))
    build.load.cache_clear()
    yield tmp_path / "cache"
    build.load.cache_clear()  # later tests load from the default cache again


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH")
def test_compiles_once_then_loads_the_cached_file(fresh) -> None:
    lib = build.load("qlinear")
    assert lib is not None and hasattr(lib, "int8_linear_f32")
    files = list(fresh.glob("qlinear-*.so"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    build.load.cache_clear()
    assert build.load("qlinear") is not None
    assert [f.stat().st_mtime_ns for f in fresh.glob("qlinear-*.so")] == [stamp]  # not rebuilt


def test_off_switch_gives_none(fresh, monkeypatch) -> None:
    monkeypatch.setenv("GLMSERVE_KERNELS", "0")
    assert not build.enabled()
    assert build.load("qlinear") is None
    assert not fresh.exists()


def test_a_failing_compiler_gives_none_and_says_why(fresh, monkeypatch, tmp_path, caplog) -> None:
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: simulated failure' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with caplog.at_level(logging.WARNING, logger="glmserve.kernels"):
        assert build.load("qlinear") is None
    assert "simulated failure" in caplog.text
    assert not list(fresh.glob("*.so"))


def test_no_compiler_gives_none(fresh, monkeypatch) -> None:
    monkeypatch.setattr(build, "compiler", lambda: None)
    assert build.load("qlinear") is None

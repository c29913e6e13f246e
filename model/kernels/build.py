"""Compiles and loads glmserve's hand-written CPU kernels (model/kernels/csrc/*.c) at first use.

Why C at all: PyTorch's eager ops cost ~5-10 us each on these hosts before any work, and a decode step of
the default model ran ~40 ops per layer (9 ms of a 15 ms int4 step); its fastest fp32 one-row product read
weights at 20 GB/s where a plain read runs at 35 GB/s (benchmarks/bench_gemv.py). No library PyTorch 2.13
runs with does fused decode attention over our paged cache or a bandwidth-bound fp32 GEMV on CPU.

Each source file becomes its own shared library, compiled once per (source, compiler, CPU flags) into
~/.cache/glmserve/kernels (GLMSERVE_KERNEL_CACHE overrides) with -O3 -march=native -fopenmp, and is
loaded with ctypes. OpenMP: the library needs libgomp.so.1, which the dynamic linker resolves to the copy
torch already loaded (same soname), so our parallel regions share torch's thread pool instead of racing
a second one for the cores. Callers pass the thread count (torch.get_num_threads()) per call.

Anything that fails (no compiler, a compile error, GLMSERVE_KERNELS=0) returns None with one log line,
and every caller falls back to the PyTorch path it had before: the kernels are speed, never function.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("glmserve.kernels")

CSRC = Path(__file__).parent / "csrc"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-Wall", "-Werror=implicit"]


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def cache_dir() -> Path:
    return Path(os.environ.get("GLMSERVE_KERNEL_CACHE", Path.home() / ".cache" / "glmserve" / "kernels"))


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def enabled() -> bool:
    return os.environ.get("GLMSERVE_KERNELS", "1") not in ("0", "false", "no", "off")


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """csrc/<name>.c as a loaded library, or None (logged once) when it cannot be had on this host."""
    if not enabled():
        log.info("kernels: %s off (GLMSERVE_KERNELS=0): PyTorch paths only", name)
        return None
    import torch  # noqa: F401  -- loads torch's libgomp first, so the library binds to that copy

    source = CSRC / f"{name}.c"
    cc = compiler()
    if cc is None:
        log.info("kernels: no C compiler on PATH: %s unavailable, PyTorch paths only", name)
        return None
    text = source.read_bytes()
    key = hashlib.sha256(text + " ".join(CFLAGS).encode() + _compiler_version(cc).encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # compiled to a temporary name and renamed: two processes starting at once never load half a file
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([cc, *CFLAGS, str(source), "-o", str(out), "-lm"], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:
                log.warning("kernels: compiling %s failed (PyTorch paths only):\n%s", source, proc.stderr[-4000:])
                return None
            os.replace(out, target)
        log.info("kernels: compiled %s -> %s", source.name, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        log.warning("kernels: loading %s failed (PyTorch paths only): %s", target, exc)
        return None

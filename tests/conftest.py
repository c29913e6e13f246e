"""Fixtures every test area can use.

    tiny_llama_dir   a random 2-layer Llama checkpoint (transformers save_pretrained) with the default
                     model's tokenizer and chat template; built once per session
Live servers: tests/helpers/live_server.py (SubprocessServer, ThreadedServer).
"""
from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that wait by spinning burn the cores other processes need: with both cores busy, a
# 2-thread training step took 3.4 s spinning and 0.23 s passive (it must be set before torch loads;
# servers the tests start inherit it)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A test that runs `glmserve serve`'s main in this process (configure_logging) leaves the root logger
    as it found it, so later in-process servers do not print their request lines into the run's output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.helpers.checkpoints import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """The default-model server tests/clients and tests/deploy share stops once the run leaves them,
    so it does not hold ~2 GB and a few threads through the rest of the suite."""
    from tests.clients.live import SHARING_FOLDERS, stop_shared_default_server

    def folder(it: pytest.Item) -> str:
        parts = it.path.relative_to(item.config.rootpath).parts
        return parts[1] if len(parts) > 2 and parts[0] == "tests" else ""

    if folder(item) in SHARING_FOLDERS and (nextitem is None or folder(nextitem) not in SHARING_FOLDERS):
        stop_shared_default_server()

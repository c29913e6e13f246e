"""Shared fixtures: a tiny Llama and a tiny GLM base, adapters made by PEFT, their merged references."""
from __future__ import annotations

import pytest

from tests.lora.adapters import build_tiny_glm, make_peft_adapter


@pytest.fixture(scope="session")
def llama_adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (adapter dir, PEFT-merged checkpoint dir), three adapters of different ranks."""
    root = tmp_path_factory.mktemp("llama-adapters")
    return {f"a{i}": make_peft_adapter(tiny_llama_dir, root / f"a{i}", seed=i, rank=rank, scale=3.0)
            for i, rank in ((1, 4), (2, 8), (3, 2))}


@pytest.fixture(scope="session")
def tiny_glm_dir(tmp_path_factory) -> str:
    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm"))


@pytest.fixture(scope="session")
def glm_adapter(tiny_glm_dir, tmp_path_factory) -> tuple[str, str]:
    return make_peft_adapter(tiny_glm_dir, tmp_path_factory.mktemp("glm-adapter"), seed=7, rank=4, scale=3.0)

"""Fixtures for the training tests: a synthetic corpus, a tokenizer trained on it, a tiny GLM shape.

Everything is small enough for two shared CPU cores; each session-scoped artifact is built once.
"""
from __future__ import annotations

import pytest
import torch

from tests.train.recipes import TINY_GLM, train_config


@pytest.fixture(autouse=True)
def _cpu_threads():
    # two cores shared with other test processes: more threads only adds contention
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reverse_data(tmp_path_factory) -> tuple[str, str]:
    from model.train.synthetic import ReverseTaskConfig, make_reverse_task

    files = make_reverse_task(ReverseTaskConfig(str(tmp_path_factory.mktemp("reverse")), num_train=2000,
                                                num_eval=50, min_len=3, max_len=6))
    return files.train, files.heldout


@pytest.fixture(scope="session")
def glm_tokenizer(reverse_data, tmp_path_factory) -> str:
    from model.train.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    corpus = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    # some prose and Chinese beside the task, so merges and multi-byte text are exercised
    corpus.write_text("GLM models answer in Chinese and English.\n\n你好，世界！今天天气很好。\n\n"
                      "The server streams tokens over SSE.\n", encoding="utf-8")
    out = str(tmp_path_factory.mktemp("tok"))
    return train_tokenizer(TokenizerTrainConfig([reverse_data[0], str(corpus)], out, vocab_size=400))


@pytest.fixture(scope="session")
def tiny_glm_checkpoint(glm_tokenizer, reverse_data, tmp_path_factory) -> str:
    """A GLM pretrained for a few steps and exported: the HF-compatibility tests read it."""
    from model.train.pretrain import PretrainConfig, run_pretrain

    out = tmp_path_factory.mktemp("tiny-glm")
    run_pretrain(PretrainConfig("glm-tiny", glm_tokenizer, [reverse_data[0]], train_config(out, max_steps=6),
                                model_overrides=dict(TINY_GLM)))
    return str(out)

"""Proof (a): a tiny GLM with its own tokenizer, trained from scratch, reverses letter strings it has
never seen, judged by exact match of greedy output on held-out items.

CI runs strings of 3-5 letters (1500 steps); the slow variant is the docs/BENCHMARKS.md run, 3-6
letters (3000 steps). Both use one thread: the step at which the model leaves its loss plateau is
sensitive to rounding, and a fixed thread count makes the run bit-for-bit repeatable.
"""
from __future__ import annotations

import pytest
import torch

from model.train.config import OptimConfig, TrainConfig

# 0.1M parameters: two layers of width 64, four heads sharing two KV heads (docs/BENCHMARKS.md)
REVERSAL_GLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2}


def reversal_exact_match(root, min_len: int, max_len: int, steps: int):
    from model.train.evaluate import exact_match, read_items
    from model.train.pretrain import PretrainConfig, run_pretrain
    from model.train.synthetic import ReverseTaskConfig, make_reverse_task
    from model.train.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    train, heldout = make_reverse_task(ReverseTaskConfig(str(root / "data"), num_train=20000, num_eval=200,
                                                         min_len=min_len, max_len=max_len))
    tokenizer = train_tokenizer(TokenizerTrainConfig([train], str(root / "tok"), vocab_size=320))
    cfg = TrainConfig(out_dir=str(root / "model"), batch_size=32, max_len=64, max_steps=steps, eval_ratio=0.02,
                      progress=False, resume="never", device="cpu", optim=OptimConfig(lr=3e-3))
    result = run_pretrain(PretrainConfig("glm-tiny", tokenizer, [train], cfg, model_overrides=dict(REVERSAL_GLM)))
    return exact_match(str(root / "model"), read_items(heldout)), result


@pytest.fixture
def one_thread():
    torch.set_num_threads(1)


def test_tiny_glm_learns_to_reverse_unseen_strings(tmp_path, one_thread) -> None:
    em, result = reversal_exact_match(tmp_path, 3, 5, steps=1500)
    assert em.total == 200
    assert em.accuracy >= 0.95, em.examples
    assert result.final_eval_loss < 1.5  # the inputs are random letters: ~1.1 nats/token is the floor


@pytest.mark.slow
def test_tiny_glm_reverses_longer_strings(tmp_path, one_thread) -> None:
    em, _ = reversal_exact_match(tmp_path, 3, 6, steps=3000)
    assert em.accuracy >= 0.95, em.examples

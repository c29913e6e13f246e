"""Shared recipes for the training tests: a tiny GLM shape, a quiet TrainConfig, a child environment."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from model.train.config import OptimConfig, TrainConfig

# A GLM small enough that a step takes milliseconds, with the preset's architecture (GQA, QKV bias,
# partial interleaved rotary).
TINY_GLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256}


def train_config(out_dir: str | Path, **kwargs) -> TrainConfig:
    """A quiet, small TrainConfig; optimizer fields may be passed as optim_<name>."""
    optim_kwargs = {k[len("optim_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("optim_")}
    base = TrainConfig(out_dir=str(out_dir), batch_size=4, max_len=32, max_steps=4, progress=False,
                       eval_ratio=0.05, resume="never", device="cpu", optim=OptimConfig(lr=3e-3, warmup_steps=1))
    if optim_kwargs:
        base = replace(base, optim=replace(base.optim, **optim_kwargs))
    return replace(base, **kwargs)


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m model.train` children: offline, one thread each, repo importable."""
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env

"""Training checkpoints for exact resume: model, optimizer, scheduler, every rank's RNG, data position.

    OUT/checkpoints/step-00000100/state.pt    written atomically (tmp dir, then rename)

State dicts are full (unsharded) and keyed by our parameter names whatever the wrapping (single
process, DDP, FSDP), so a run may resume with a different number of processes. The data position is
the optimizer step: the batch plan (data.py) maps it to the next samples.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from model.train.distributed import DistInfo, barrier

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def latest_checkpoint(out_dir: str) -> str | None:
    root = checkpoints_dir(out_dir)
    if not os.path.isdir(root):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _STEP_DIR.match(name))
             and os.path.exists(os.path.join(root, name, "state.pt"))]
    return os.path.join(root, max(steps)[1]) if steps else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, info: DistInfo, extra: dict[str, Any], keep: int) -> str | None:
    """Collective: every rank must call it. Rank 0 writes; returns the checkpoint dir on rank 0."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=opts)
    rngs = [None] * info.world_size if info.distributed else [rng_state()]
    if info.distributed:
        dist.all_gather_object(rngs, rng_state())
    path = None
    if info.is_main:
        root = checkpoints_dir(out_dir)
        path = os.path.join(root, f"step-{step:08d}")
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        torch.save({"step": step, "model": model_state, "optimizer": optim_state,
                    "scheduler": scheduler.state_dict(), "rng": rngs, "world_size": info.world_size, **extra},
                   os.path.join(tmp, "state.pt"))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # a kill mid-save leaves only a .tmp dir, never a torn checkpoint
        _prune(root, keep)
    barrier(info)
    return path


def _prune(root: str, keep: int) -> None:
    steps = sorted((int(m.group(1)), name) for name in os.listdir(root) if (m := _STEP_DIR.match(name)))
    for _, name in steps[:-keep]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    info: DistInfo) -> dict[str, Any]:
    """Restores everything saved; returns the checkpoint dict (its "step" is where training resumes)."""
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    # the same world size gets each rank its own generator back; otherwise rank 0's is the best guess
    set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    return state

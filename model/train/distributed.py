"""Process groups and model wrapping: single process, DDP, or FSDP (fully_shard), on CPU or CUDA.

    torchrun --nproc-per-node 2 -m model.train pretrain ...        DDP, gloo on CPU / nccl on CUDA
    torchrun --nproc-per-node 8 -m model.train pretrain --fsdp ... parameters sharded across ranks

The loss is computed inside the wrapped module (TokenLoss) so that DDP's and FSDP's forward hooks
see the whole computation, the output projection included.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.train.data import IGNORE_INDEX


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Joins the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world, dev)


@contextmanager
def distributed_run(info: DistInfo | None, device: str) -> Iterator[DistInfo]:
    """The process group of one run: joined here and left on exit, unless the caller passes its own."""
    if info is not None:
        yield info
        return
    info = init_distributed(device)
    try:
        yield info
    except BaseException:
        shutdown_distributed(succeeded=False)
        raise
    shutdown_distributed()  # a barrier: rank 1 waits here until rank 0 has written the checkpoint


def shutdown_distributed(succeeded: bool = True) -> None:
    """Leaves the process group; every rank calls it once at the end of a run.

    The barrier is the last collective, so the process group's destructor (run later, holding the GIL,
    when DDP's Reducer is freed) finds gloo's worker threads idle; it holds no Python tensor, so freeing
    it needs no GIL (see all_reduce_sum). After a failure the peers may be gone: sleeping instead still
    lets finished collectives be freed without waiting on anyone.
    """
    if not dist.is_initialized():
        return
    if succeeded:
        dist.barrier()
    else:
        time.sleep(0.2)
    dist.destroy_process_group()


class TokenLoss(nn.Module):
    """Summed next-token cross-entropy of a CausalLM; the caller divides by the global target count."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model.compute_logits(self.model(input_ids))  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")


def wrap_for_training(model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    """TokenLoss(model), under DDP or FSDP when there are several processes."""
    loss_module = TokenLoss(model)
    if not info.distributed:
        return loss_module
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in model.layers:  # one all-gather per block keeps peak memory to one layer's weights
            fully_shard(layer, mesh=mesh)
        fully_shard(loss_module, mesh=mesh)  # the root holds embeddings, final norm and lm_head
        return loss_module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(loss_module, device_ids=[info.device.index] if info.device.type == "cuda" else None)


@contextmanager
def gradient_sync(wrapped: nn.Module, sync: bool) -> Iterator[None]:
    """Skips the gradient all-reduce on accumulation micro-batches; only the last one syncs."""
    if hasattr(wrapped, "no_sync"):  # DDP
        with (nullcontext() if sync else wrapped.no_sync()):
            yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    python_refs = sys.getrefcount(t)
    dist.all_reduce(t)
    if dist.get_backend() == "gloo":
        # Gloo frees a finished collective on its worker thread, and dropping a tensor Python knows
        # needs the GIL there; the process group's destructor joins that thread while holding the GIL,
        # so a collective still being freed at exit hangs the process. While C++ holds the tensor it
        # holds a Python reference too: wait (GIL released) until that reference is gone.
        deadline = time.monotonic() + 1.0
        while sys.getrefcount(t) > python_refs and time.monotonic() < deadline:
            time.sleep(0.0002)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()

"""What the CUDA tests share: a checkpoint's CUDA fp32 logits against the same weights on the CPU."""
from __future__ import annotations

import torch

from model import load_model


def assert_cuda_logits_match_cpu(path: str, vocab: int = 512, atol: float = 1e-3) -> None:
    cpu = load_model(path).model
    gpu = load_model(path, device="cuda", dtype=torch.float32).model
    ids = torch.randint(0, vocab, (2, 32))
    with torch.no_grad():
        ref = cpu.compute_logits(cpu(ids))
        got = gpu.compute_logits(gpu(ids.cuda())).cpu()
    assert (ref - got).abs().max().item() < atol

"""Calibration of the int4 lm_head: how much an error in each of its input columns costs.

The lm_head's logits are h @ W^T, so an error e in column k of W moves the logits by h_k * e: its expected
cost is E[h_k^2] * e^2. E[h_k^2] is measured by a short forward pass of the model being loaded (its
projections already quantized, the table still float) over a committed calibration text
(data/calibration/prose.txt, general English prose sharing nothing with data/eval). Without the
checkpoint's tokenizer or that text, fixed random token ids stand in (measured second best; BENCHMARKS.md).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("glmserve.quant")

CALIBRATION_TEXT = Path(__file__).resolve().parents[2] / "data" / "calibration" / "prose.txt"
WINDOW_TOKENS = 128  # each window runs alone, as a prompt would
MAX_WINDOWS = 8  # ~1,000 tokens: the whole text on the default tokenizer


def random_windows(vocab_size: int) -> list[list[int]]:
    """MAX_WINDOWS x WINDOW_TOKENS token ids from a fixed seed: the stand-in when there is no text to read."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (MAX_WINDOWS, WINDOW_TOKENS), generator=g).tolist()


def calibration_windows(model_dir: str | None, vocab_size: int) -> list[list[int]]:
    """The calibration text by the checkpoint's tokenizer, in windows of WINDOW_TOKENS (the last one
    shorter); random_windows when the tokenizer or the text is missing or yields ids outside the vocab."""
    if model_dir is not None and CALIBRATION_TEXT.is_file():
        try:
            from model.tokenizer import Tokenizer

            ids = Tokenizer(model_dir).encode(CALIBRATION_TEXT.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - no (loadable) tokenizer in the checkpoint: the stand-in
            log.info("no tokenizer for the int4 calibration text (%s); random token ids instead", e)
        else:
            if ids and max(ids) < vocab_size:
                windows = [ids[i: i + WINDOW_TOKENS] for i in range(0, len(ids), WINDOW_TOKENS)]
                return [w for w in windows if len(w) > 1][:MAX_WINDOWS]
            log.info("the calibration text's ids do not fit a %d-token vocabulary; random ids instead", vocab_size)
    elif model_dir is not None:
        log.info("no calibration text at %s (an installed copy without data/); random token ids instead",
                 CALIBRATION_TEXT)
    return random_windows(vocab_size)


def lm_head_input_second_moment(model: nn.Module, windows: list[list[int]]) -> torch.Tensor:
    """E[h_k^2] (K,) of the lm_head's input (the model's final hidden states) over the windows."""
    device = next(t.device for t in [*model.parameters(), *model.buffers()] if not t.is_meta)
    total, count = None, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for ids in windows:
            hidden = model(torch.tensor([ids], device=device)).float()
            moment = hidden.reshape(-1, hidden.shape[-1]).square().sum(0)
            total = moment if total is None else total + moment
            count += len(ids)
    log.info("int4 lm_head calibration: %d tokens in %d windows, %.1fs", count, len(windows),
             time.perf_counter() - start)
    return (total / count).cpu()

"""Embeddings through the engine's own batching: a pooling request is a prompt-only sequence
(SamplingParams(max_tokens=0, pooling="mean")) that is scheduled, chunk-prefilled and preempted like any
other; the runner hands each step's final hidden states (after the last norm) to the Pooler, which keeps
a running sum per sequence and, on the step that completes the prompt, stores the L2-normalized pooled
vector on the sequence; its one RequestOutput carries it as `embedding`.

Pooling:
  mean (the server's choice): the average over every prompt position. A causal LM was never trained to
      put the whole text into its last position (that row is tuned to predict the next token), while
      the average reads every position; on SmolLM2-135M it separates paraphrases from unrelated
      sentences by a wider margin than the last token does. Every position must be computed, so a mean
      pooling sequence never takes blocks from the prefix cache (BlockManager._cached_prefix).
  last: the last prompt position's hidden state (works with the prefix cache; for checkpoints trained
      for last-token pooling).
Normalized to unit length, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from model.engine.sequence import Sequence

POOLING_TYPES = ("mean", "last")


@dataclass
class PoolingChunk:
    seq: Sequence
    first_row: int  # of this step's flattened hidden states
    num_rows: int
    first_position: int  # prompt position of the first row
    completes_prompt: bool


class Pooler:
    def __init__(self) -> None:
        # running (hidden,) fp32 sums per sequence; weak, so an aborted sequence leaves nothing behind
        self._sums: weakref.WeakKeyDictionary[Sequence, torch.Tensor] = weakref.WeakKeyDictionary()

    def pool(self, hidden: torch.Tensor, chunks: list[PoolingChunk]) -> None:
        """hidden: (T, hidden) of one step. Sets seq.embedding on each sequence whose prompt is complete."""
        for chunk in chunks:
            seq = chunk.seq
            rows = hidden[chunk.first_row:chunk.first_row + chunk.num_rows].float()
            if seq.params.pooling == "last":
                vector = rows[-1] if chunk.completes_prompt else None
            else:
                if chunk.first_position == 0:  # a fresh start (also after a preemption's recompute)
                    self._sums[seq] = torch.zeros(hidden.shape[-1], dtype=torch.float32, device=hidden.device)
                self._sums[seq] += rows.sum(dim=0)
                vector = self._sums.pop(seq) / seq.num_prompt_tokens if chunk.completes_prompt else None
            if vector is not None:
                seq.embedding = torch.nn.functional.normalize(vector, dim=0).tolist()

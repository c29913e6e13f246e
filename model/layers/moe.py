"""Sparse mixture-of-experts MLP: a router picks top-k gated-SiLU experts per token, plus optional
always-on shared experts (GLM-4.5). Routing follows transformers' Qwen3-MoE and GLM-4.5 definitions.

The expert compute is the simple one: sort the (token, expert) assignments by expert, run each hit
expert once on the rows routed to it (index_select), and scatter the weighted results back (index_add_).
Its cost on CPU is in docs/BENCHMARKS.md ("MoE on CPU").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MoeConfig
from model.layers.mlp import GatedMLP


class Router(nn.Module):
    """(T, H) hidden states -> routing weights (T, k) fp32 and expert ids (T, k).

    Scores are computed in fp32 from an fp32 weight whatever the network's dtype: GLM-4.5's reference
    keeps its gate in fp32 too, and a bf16 router flips near-tied expert choices."""

    def __init__(self, hidden_size: int, cfg: MoeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)  # transformers' initializer_range
        # GLM-4.5's per-expert bias steers which experts are chosen, not how much they weigh; it is
        # load-balancing state, not trained by gradient
        self.e_score_correction_bias = (nn.Parameter(torch.zeros(cfg.num_experts), requires_grad=False)
                                        if cfg.score_correction_bias else None)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        super()._apply(fn, recurse)
        for p in self.parameters(recurse=False):  # .to(bf16) moves the router but keeps it fp32
            if p.dtype != torch.float32:
                p.data = p.data.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight)  # (T, E)
        scores = logits.softmax(dim=-1) if cfg.scoring == "softmax" else logits.sigmoid()
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        if cfg.num_groups > 1:
            choice = self._limit_to_groups(choice)
        ids = choice.topk(cfg.num_experts_per_tok, dim=-1, sorted=False).indices  # (T, k)
        weights = scores.gather(1, ids)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * cfg.routed_scaling_factor, ids

    def _limit_to_groups(self, choice: torch.Tensor) -> torch.Tensor:
        """Keeps the experts of the topk_groups best groups, a group scored by its two best experts."""
        cfg = self.cfg
        grouped = choice.view(choice.shape[0], cfg.num_groups, -1)  # (T, G, E/G)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (T, G)
        best = group_scores.topk(cfg.topk_groups, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, cfg: MoeConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k = cfg.num_experts, cfg.num_experts_per_tok
        self.gate = Router(hidden_size, cfg)
        self.experts = nn.ModuleList(GatedMLP(hidden_size, cfg.intermediate_size) for _ in range(cfg.num_experts))
        self.shared_experts = (GatedMLP(hidden_size, cfg.intermediate_size * cfg.num_shared_experts)
                               if cfg.num_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (T, H)
        weights, ids = self.gate(x)
        out = self._routed(x, weights, ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view(shape)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        flat_ids = ids.flatten()  # (T*k,) assignment j belongs to token j // k
        order = flat_ids.argsort(stable=True)
        rows_of = order // self.top_k  # token row of each assignment, grouped by expert
        weight_of = weights.flatten()[order]
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()  # one host sync per layer
        out = torch.zeros_like(x)
        start = 0
        for expert, n in zip(self.experts, counts):
            if n:
                rows = rows_of[start:start + n]
                y = expert(x.index_select(0, rows)) * weight_of[start:start + n, None]  # fp32 weights, as HF
                out.index_add_(0, rows, y.to(out.dtype))
                start += n
        return out

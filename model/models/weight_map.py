"""Translation between a checkpoint's tensor names and ours, in both directions.

Our network fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; checkpoints that keep them
apart map onto a row-slice ("shard") of the fused weight. Loading and exporting use the same rules, so a
checkpoint we write is one the original architecture reads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    pattern: str  # checkpoint name, "{i}" = layer index
    target: str  # our parameter name
    shard: str | None = None  # None, "q", "k", "v", "gate", "up"


class WeightMap:
    def __init__(self, rules: list[Rule], ignored: Iterable[str] = ()) -> None:
        self.rules = rules
        self._compiled = [(re.compile("^" + re.escape(r.pattern).replace(r"\{i\}", r"(\d+)") + "$"), r) for r in rules]
        self._ignored = [re.compile(p) for p in ignored]

    def lookup(self, name: str) -> tuple[str, str | None] | None:
        for regex, rule in self._compiled:
            m = regex.match(name)
            if m:
                target = rule.target.replace("{i}", m.group(1)) if m.groups() else rule.target
                return target, rule.shard
        if any(p.search(name) for p in self._ignored):
            return None
        raise KeyError(f"checkpoint tensor {name!r} has no place in this network")

    def load(self, model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]]) -> set[str]:
        """Copies each tensor into its parameter (slice); returns the set of our names it filled."""
        params = dict(model.named_parameters())
        filled: set[str] = set()
        cfg: ModelConfig = model.config
        for name, tensor in tensors:
            found = self.lookup(name)
            if found is None:
                continue
            target, shard = found
            if target not in params:
                if target == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                raise KeyError(f"checkpoint tensor {name!r} maps to unknown parameter {target!r}")
            dest = _shard_view(params[target].data, shard, cfg)
            if dest.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != expected {tuple(dest.shape)}")
            with torch.no_grad():
                dest.copy_(tensor)
            filled.add(target if shard is None else f"{target}:{shard}")
        return _whole_params(filled)

    def export(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Our state dict in the checkpoint's names (shards split back out)."""
        cfg: ModelConfig = model.config
        params = dict(model.named_parameters())
        out: dict[str, torch.Tensor] = {}
        for rule in self.rules:
            layer_ids = range(cfg.num_hidden_layers) if "{i}" in rule.target else [None]
            for i in layer_ids:
                target = rule.target.replace("{i}", str(i)) if i is not None else rule.target
                if target not in params:
                    continue
                name = rule.pattern.replace("{i}", str(i)) if i is not None else rule.pattern
                if target == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                out[name] = _shard_view(params[target].data, rule.shard, cfg).detach().contiguous().clone()
        return out


def _shard_view(param: torch.Tensor, shard: str | None, cfg: ModelConfig) -> torch.Tensor:
    if shard is None:
        return param
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    i = cfg.intermediate_size
    spans = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv), "gate": (0, i), "up": (i, 2 * i)}
    start, end = spans[shard]
    return param[start:end]


_SHARDS_OF = {"qkv_proj": {"q", "k", "v"}, "gate_up_proj": {"gate", "up"}}


def _whole_params(filled: set[str]) -> set[str]:
    """Names of parameters filled whole, counting a fused one once all of its shards are in."""
    whole = {n for n in filled if ":" not in n}
    shards: dict[str, set[str]] = {}
    for n in filled - whole:
        name, shard = n.split(":")
        shards.setdefault(name, set()).add(shard)
    for name, got in shards.items():
        module = name.split(".")[-2]
        if got == _SHARDS_OF[module]:
            whole.add(name)
    return whole


def expected_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}

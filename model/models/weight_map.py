"""Translation between a checkpoint's tensor names and ours, in both directions.

Our network fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; checkpoints that keep them
apart map onto a row-slice ("shard") of the fused weight. Loading and exporting use the same rules, so a
checkpoint we write is one the original architecture reads. Patterns name the layer `{i}` and, in MoE
networks, the expert `{e}`.

Tensors of GLM-4.5's multi-token-prediction layers (`model.layers.{n}...` for n past the last decoder
layer, `num_mtp_layers` of them) have no place in the network: `mtp_layer_of` names them, and the loader
leaves them unread.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from model.config import ModelConfig

_PLACEHOLDERS = {r"\{i\}": r"(?P<i>\d+)", r"\{e\}": r"(?P<e>\d+)"}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Rule:
    pattern: str  # checkpoint name, "{i}" = layer index, "{e}" = expert index
    target: str  # our parameter name
    shard: str | None = None  # None, "q", "k", "v", "gate", "up"


class WeightMap:
    def __init__(self, rules: list[Rule], ignored: Iterable[str] = ()) -> None:
        self.rules = rules
        self._compiled = [(re.compile("^" + _placeholders_to_groups(re.escape(r.pattern)) + "$"), r) for r in rules]
        self._ignored = [re.compile(p) for p in ignored]

    def lookup(self, name: str) -> tuple[str, str | None] | None:
        for regex, rule in self._compiled:
            m = regex.match(name)
            if m:
                return rule.target.format(**m.groupdict()), rule.shard
        if any(p.search(name) for p in self._ignored):
            return None
        raise KeyError(f"checkpoint tensor {name!r} has no place in this network")

    def load(self, model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor | RowSource]],
             hooks: "LoadHooks | None" = None) -> set[str]:
        """Copies each tensor into its parameter (slice); returns the set of our names it filled.
        With hooks, a parameter still on the meta device is materialized when its first tensor arrives,
        and handed over once whole (the loader quantizes a projection there, so the float copy of the
        whole model never exists). A RowSource goes to hooks.load_rows when the hooks take it, else it is
        read whole."""
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
                    continue  # (a RowSource of it is never read)
                raise KeyError(f"checkpoint tensor {name!r} maps to unknown parameter {target!r}")
            if isinstance(tensor, RowSource):
                if hooks is not None and shard is None and params[target].is_meta and hooks.takes_rows(target):
                    if tuple(tensor.shape) != tuple(params[target].shape):
                        raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != expected "
                                         f"{tuple(params[target].shape)}")
                    del params[target]  # the hook replaces the module; this reference must not keep it
                    hooks.load_rows(target, tensor)
                    filled.add(target)
                    continue
                tensor = tensor.read()  # every other consumer takes the tensor whole
            dest = _shard_view(params[target].data, shard, cfg)
            if dest.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != expected {tuple(dest.shape)}")
            if hooks is not None and params[target].is_meta:
                params[target] = hooks.materialize(target, tensor, whole=shard is None)
                dest = _shard_view(params[target].data, shard, cfg)
            if dest.data_ptr() != tensor.data_ptr():
                with torch.no_grad():
                    dest.copy_(tensor)
            filled.add(target if shard is None else f"{target}:{shard}")
            if hooks is not None and (shard is None or _all_shards_in(target, filled)):
                del params[target]  # the hook may replace the module; this reference must not keep it
                hooks.whole(target)
        return _whole_params(filled)

    def export(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Our state dict in the checkpoint's names (shards split back out)."""
        cfg: ModelConfig = model.config
        params = dict(model.named_parameters())
        out: dict[str, torch.Tensor] = {}
        num_experts = cfg.moe.num_experts if cfg.moe is not None else 0
        for rule in self.rules:
            layer_ids = range(cfg.num_hidden_layers) if "{i}" in rule.target else [0]
            expert_ids = range(num_experts) if "{e}" in rule.target else [0]
            for i in layer_ids:
                for e in expert_ids:
                    target = rule.target.format(i=i, e=e)
                    if target not in params or (target == "lm_head.weight" and cfg.tie_word_embeddings):
                        continue
                    name = rule.pattern.format(i=i, e=e)
                    out[name] = _shard_view(params[target].data, rule.shard, cfg).detach().contiguous().clone()
        return out


class RowSource:
    """A checkpoint tensor not yet read (a large one): `source[i:j]` reads rows i..j, `read()` all of it.
    A consumer that works row by row (quantizing an embedding table) never holds the float tensor whole."""

    shape: torch.Size
    dtype: torch.dtype

    def __getitem__(self, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def read(self) -> torch.Tensor:
        raise NotImplementedError


class LoadHooks:
    """What WeightMap.load calls on a model whose parameters start on the meta device."""

    def takes_rows(self, name: str) -> bool:
        """Whether parameter `name`, filled whole by one checkpoint tensor, can be loaded by load_rows."""
        return False

    def load_rows(self, name: str, source: RowSource) -> None:
        """Parameter `name` from its tensor read in row slices; its module is finished as whole() would."""
        raise NotImplementedError

    def materialize(self, name: str, first: torch.Tensor, whole: bool) -> torch.Tensor:
        """The parameter `name`, now in memory, for its `first` checkpoint tensor: that tensor itself when
        it fills the parameter whole, else an empty one for the shards to be copied into."""
        raise NotImplementedError

    def whole(self, name: str) -> None:  # every tensor of parameter `name` is in
        raise NotImplementedError


def _shard_view(param: torch.Tensor, shard: str | None, cfg: ModelConfig) -> torch.Tensor:
    if shard is None:
        return param
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    i = param.shape[0] // 2  # gate_up_proj: dense MLP, expert or shared experts, each its own width
    spans = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv), "gate": (0, i), "up": (i, 2 * i)}
    start, end = spans[shard]
    return param[start:end]


def _placeholders_to_groups(escaped: str) -> str:
    for placeholder, group in _PLACEHOLDERS.items():
        escaped = escaped.replace(placeholder, group)
    return escaped


def mtp_layer_of(name: str, cfg: ModelConfig) -> int | None:
    """The index of the multi-token-prediction layer a checkpoint tensor belongs to, else None."""
    if not cfg.num_mtp_layers:
        return None
    m = _HF_LAYER.match(name)
    if m is None:
        return None
    layer = int(m.group(1))
    return layer if cfg.num_hidden_layers <= layer < cfg.num_hidden_layers + cfg.num_mtp_layers else None


_SHARDS_OF = {"qkv_proj": {"q", "k", "v"}, "gate_up_proj": {"gate", "up"}}


def _all_shards_in(name: str, filled: set[str]) -> bool:
    """Whether every shard of the fused parameter `name` is among `filled` ("name:shard" entries)."""
    return all(f"{name}:{shard}" in filled for shard in _SHARDS_OF[name.split(".")[-2]])


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

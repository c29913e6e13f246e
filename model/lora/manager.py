"""LoRAManager: the adapters an engine knows, the ones resident on the device, and each step's rows.

    manager = LoRAManager(model, max_loras=4, max_lora_rank=64)
    lora_id = manager.load("support", "/adapters/support")     # validated; AdapterError says why not
    manager.prepare_step([(lora_id, 5), (0, 1), ...])           # per scheduled sequence: (adapter, rows)

Registered adapters are kept on the host (fp32, as read); at most `max_loras` are resident on the device
in the model's dtype, least recently used evicted first. The scheduler admits a sequence only while the
running sequences use at most `max_loras` adapters (`can_admit`), so one step never needs more.
Wrapping the model's projections happens at the first load: an engine that never loads an adapter runs
the unchanged network.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from model.lora.layer import LoRAProjection, LoRAStep, Stacked
from model.lora.peft_format import MODULES, AdapterError, AdapterWeights, read_adapter

log = logging.getLogger("glmserve.lora")


class AdapterInUse(RuntimeError):
    """Unloading an adapter that live requests still use."""


@dataclass
class Adapter:
    name: str
    path: str
    lora_id: int  # > 0; a new id per load, so a re-load under the same name never shares cached blocks
    weights: AdapterWeights
    provenance: dict = field(default_factory=dict)  # training_args.json when our trainer wrote it
    loaded_at: float = field(default_factory=time.time)

    def card(self) -> dict:
        return {"name": self.name, "path": self.path, "rank": self.weights.rank, "alpha": self.weights.alpha,
                "target_modules": self.weights.target_modules, "provenance": self.provenance}


class LoRAManager:
    def __init__(self, model: nn.Module, max_loras: int, max_lora_rank: int, pack: bool = True) -> None:
        self.model = model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.pack = pack  # oneDNN-reordered stacked A on CPU (off with EngineConfig.enforce_eager)
        self.adapters: dict[str, Adapter] = {}
        self.by_id: dict[int, Adapter] = {}
        self.resident: OrderedDict[int, dict] = OrderedDict()  # lora_id -> device weights, LRU order
        self.step = LoRAStep()
        self._ids = itertools.count(1)
        self._wrapped = False
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.num_loads_to_device = 0
        self.num_mixed_steps = 0
        self._stack_ids: tuple[int, ...] | None = None  # the adapter set _stack_cache was built for
        self._stack_cache: dict = {}

    # ---- registry ----------------------------------------------------------------------------------
    def load(self, name: str, path: str) -> Adapter:
        """Reads and validates the adapter at path and registers it under name (replacing nothing:
        a name already loaded is an error). Raises AdapterError."""
        if name in self.adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded (unload it first)")
        weights = read_adapter(path, self.model.config, self.max_lora_rank)
        self._wrap()
        adapter = Adapter(name, os.path.abspath(path), next(self._ids), weights, _provenance(path))
        self.adapters[name] = adapter
        self.by_id[adapter.lora_id] = adapter
        log.info("LoRA adapter %r loaded from %s: rank %d, %d projections, %.1f MiB", name, path, weights.rank,
                 len(weights.weights), weights.num_bytes / 2 ** 20)
        return adapter

    def unload(self, name: str) -> Adapter:
        adapter = self.adapters.pop(name)
        self.by_id.pop(adapter.lora_id, None)
        self.resident.pop(adapter.lora_id, None)
        self._stack_ids = None
        log.info("LoRA adapter %r unloaded", name)
        return adapter

    def id_of(self, name: str | None) -> int:
        """0 for the bare base; KeyError for an unknown adapter."""
        return 0 if name is None else self.adapters[name].lora_id

    # ---- scheduling --------------------------------------------------------------------------------
    def can_admit(self, lora_id: int, running_ids: set[int]) -> bool:
        """A sequence may join the running set while that set uses at most max_loras adapters."""
        if lora_id == 0 or lora_id in running_ids:
            return True
        return len(running_ids - {0}) < self.max_loras

    # ---- the step ----------------------------------------------------------------------------------
    def prepare_step(self, spans: list[tuple[int, int]]) -> None:
        """spans: per sequence of the step's flattened tokens, in row order, (lora_id, num_rows). Built
        once per step for every projection (layer.py): which rows each adapter owns, padded to the
        adapter with the most rows. The runner orders sequences by adapter, so a decode step whose
        adapters hold equal row counts adds its products in place."""
        step = self.step
        owned: dict[int, list[int]] = {}  # lora_id -> its rows, in row order
        row = 0
        for lora_id, num in spans:
            if lora_id:
                owned.setdefault(lora_id, []).extend(range(row, row + num))
            row += num
        if not owned:
            step.gather, step.valid, step.rows, step.stacked = None, None, None, {}
            return
        ids = tuple(sorted(owned))
        k, most = len(ids), max(len(r) for r in owned.values())
        if k + (sum(len(r) for r in owned.values()) < row) > 1:
            self.num_mixed_steps += 1  # rows of two or more adapters (or adapters and the base) in one forward
        gather, targets, valid = [], [], []
        for j, lora_id in enumerate(ids):
            rows = owned[lora_id]
            pad = most - len(rows)
            gather += [r * k + j for r in rows] + [j] * pad  # padding reads row 0's columns, zeroed below
            targets += rows + [0] * pad  # ... and adds those zeros to row 0
            valid += [1.0] * len(rows) + [0.0] * pad
        step.stacked = self._stacks(ids)
        step.gather = torch.tensor(gather, device=self.device)
        step.valid = None if all(valid) else torch.tensor(valid, device=self.device, dtype=self.dtype).unsqueeze(1)
        step.rows = None if targets == list(range(row)) else torch.tensor(targets, device=self.device)

    def _stacks(self, ids: tuple[int, ...]) -> dict[tuple[int, str], Stacked]:
        """Per projection key, the adapters' A stacked and B batched, in `ids` order, zero-padded to
        their largest rank; cached while the step's adapter set stays the same (decoding)."""
        if self._stack_ids == ids:
            for lora_id in ids:
                self.resident.move_to_end(lora_id)  # still the most recently used
            return self._stack_cache
        weights = [self._resident(lora_id, set(ids)) for lora_id in ids]
        out = {}
        for key in {k for w in weights for k in w}:
            parts = [w.get(key) for w in weights]
            a0, b0 = next(p for p in parts if p is not None)
            rank = max(p[0].shape[0] for p in parts if p is not None)
            a_all = a0.new_zeros(len(ids), rank, a0.shape[1])  # (k, R, in)
            b_all = b0.new_zeros(len(ids), rank, b0.shape[0])  # (k, R, out)
            for j, p in enumerate(parts):
                if p is not None:  # an adapter that leaves this projection alone keeps zeros
                    a_all[j, :p[0].shape[0]] = p[0]
                    b_all[j, :p[1].shape[1]] = p[1].t()
            a_all = a_all.view(-1, a0.shape[1])  # (k * R, in)
            out[key] = Stacked(a_all.t().contiguous(), b_all, self._pack(a_all))
        self._stack_ids, self._stack_cache = ids, out
        return out

    def _pack(self, a: torch.Tensor) -> torch.Tensor | None:
        """A (k * R, in) in oneDNN's layout on CPU; None elsewhere."""
        if not self.pack or self.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._reorder_linear_weight(a.contiguous(), 32)

    def _resident(self, lora_id: int, needed: set[int]) -> dict:
        if lora_id in self.resident:
            self.resident.move_to_end(lora_id)
            return self.resident[lora_id]
        adapter = self.by_id.get(lora_id)
        if adapter is None:
            raise AdapterError(f"adapter id {lora_id} is not loaded")
        while len(self.resident) >= self.max_loras:
            victim = next((i for i in self.resident if i not in needed), None)
            if victim is None:
                raise RuntimeError(f"a step needs more than max_loras={self.max_loras} adapters")
            del self.resident[victim]
            self._stack_ids = None
        self.resident[lora_id] = {key: (a.to(self.device, self.dtype), b.to(self.device, self.dtype))
                                  for key, (a, b) in adapter.weights.weights.items()}
        self.num_loads_to_device += 1
        return self.resident[lora_id]

    def _wrap(self) -> None:
        """Puts a LoRAProjection around every adaptable projection, whatever module is there now."""
        if self._wrapped:
            return
        for i, layer in enumerate(self.model.layers):
            for key in MODULES:
                owner_name, attr = key.split(".")
                owner = getattr(layer, owner_name)
                base = getattr(owner, attr, None)
                if key.startswith("mlp.") and self.model.config.is_moe_layer(i):
                    continue  # expert adapters are refused (peft_format.py)
                if not isinstance(base, nn.Module) or isinstance(base, LoRAProjection):
                    continue
                setattr(owner, attr, LoRAProjection(base, (i, key), self.step))
        self._wrapped = True


def _provenance(path: str) -> dict:
    import json

    file = os.path.join(path, "training_args.json")
    if not os.path.isfile(file):
        return {}
    try:
        with open(file) as f:
            args = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    keep = ("task", "base", "data", "data_sha256", "steps", "final_eval_loss", "lora", "created", "glmserve_version")
    return {k: args[k] for k in keep if k in args} if isinstance(args, dict) else {}

"""Owns the network and the KV cache tensors; turns a scheduled step into one forward pass.

The step's tokens are flattened: prefill chunks first (one attention call each), then all decode tokens
(one batched attention call). Logits are computed only for rows that sample.
"""
from __future__ import annotations

import logging
import os

import torch

from model.config import EngineConfig, ModelConfig
from model.engine.cpu_packing import mkldnn_available, pack_linears
from model.engine.scheduler import ScheduledSeq
from model.layers.attention import AttentionMetadata, PrefillSegment
from model.models.decoder import CausalLM

log = logging.getLogger("glmserve.engine")

CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim * elem


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", 4 << 30)
    except OSError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class ModelRunner:
    def __init__(self, model: CausalLM, engine_config: EngineConfig, max_model_len: int) -> None:
        self.model = model
        self.config = model.config
        self.engine_config = engine_config
        self.block_size = engine_config.block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        self.num_blocks = self._num_blocks()
        cfg = self.config
        # (layers, 2, num_blocks, block_size, kv_heads, head_dim)
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, self.num_blocks, self.block_size,
                                    cfg.num_key_value_heads, cfg.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(model.layers):
            layer.attn.kv_cache = self.kv_cache[i]
        if self.device.type == "cpu" and not engine_config.enforce_eager and mkldnn_available():
            log.info("packed %d linear layers for oneDNN", pack_linears(model))
        log.info("KV cache: %d blocks x %d tokens (%.1f MiB)", self.num_blocks, self.block_size,
                 self.kv_cache.numel() * self.kv_cache.element_size() / 2**20)

    def _num_blocks(self) -> int:
        per_block = kv_bytes_per_block(self.config, self.block_size, self.dtype)
        budget = self.engine_config.kv_cache_memory
        if budget is None:
            budget = int(_available_memory(self.device) * self.engine_config.kv_cache_fraction)
            # never more than every sequence at full context needs, and on CPU at most 1 GiB by default
            # (host memory is shared with everything else; pass kv_cache_memory for more)
            budget = min(budget, per_block * self.max_blocks_per_seq * self.engine_config.max_num_seqs)
            if self.device.type == "cpu":
                budget = min(budget, CPU_DEFAULT_KV_CACHE_BYTES)
        num = budget // per_block
        if num < 1:
            raise ValueError(f"kv_cache_memory={budget} bytes holds no block of {per_block} bytes")
        return int(num)

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSeq]) -> tuple[torch.Tensor, list[ScheduledSeq]]:
        """One forward pass. Returns fp32 logits (S, vocab) for the sampling sequences, in order."""
        # one new token with everything before it cached is a decode, whatever the phase
        prefills = [s for s in scheduled if s.num_tokens > 1]
        decodes = [s for s in scheduled if s.num_tokens == 1]
        ordered = prefills + decodes
        input_ids, positions, slots, logits_rows = [], [], [], []
        segments: list[PrefillSegment] = []
        row = 0
        bs = self.block_size
        for item in ordered:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_tokens
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            if item.num_tokens > 1:
                segments.append(PrefillSegment(row, item.num_tokens, end, self._tensor(table)))
            row += item.num_tokens
            if item.samples:
                logits_rows.append(row - 1)
        meta = AttentionMetadata(slot_mapping=self._tensor(slots), prefills=segments,
                                 decode_start=row - len(decodes))
        if decodes:
            self._decode_metadata(meta, decodes)
        hidden = self.model(self._tensor(input_ids), self._tensor(positions), meta)
        sampling = [s for s in ordered if s.samples]
        if not sampling:
            return torch.empty(0, self.config.vocab_size), []
        # (S, hidden) -> (S, vocab): only the rows that sample pay for the vocabulary projection
        logits = self.model.compute_logits(hidden[self._tensor(logits_rows)]).float()
        return logits, sampling

    def _decode_metadata(self, meta: AttentionMetadata, decodes: list[ScheduledSeq]) -> None:
        bs = self.block_size
        context_lens = [s.seq.num_computed_tokens + 1 for s in decodes]
        max_blocks = -(-max(context_lens) // bs)
        tables = [s.seq.block_table[:max_blocks] + [0] * (max_blocks - len(s.seq.block_table[:max_blocks]))
                  for s in decodes]
        meta.decode_block_tables = self._tensor(tables)
        lens = self._tensor(context_lens)
        ar = torch.arange(max_blocks * bs, device=self.device)
        meta.decode_mask = (ar.unsqueeze(0) < lens.unsqueeze(1)).view(len(decodes), 1, 1, -1)

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

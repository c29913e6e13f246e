"""Owns the network and the KV cache tensors; turns a scheduled step into one forward pass.

The step's tokens are flattened: prefill chunks first (one attention call each), then all decode tokens
(one batched attention call). Logits are computed only for rows that sample.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import torch

from model.config import EngineConfig, ModelConfig
from model.engine.cpu_choices import (choose_decode_attention, choose_fused_decoder, choose_greedy_screen_rows,
                                      choose_linear_packing, choose_quant_kernels, pick)
from model.engine.cpu_packing import mkldnn_available
from model.engine.greedy_screen import GreedyScreen
from model.engine.pooling import Pooler, PoolingChunk
from model.engine.scheduler import ScheduledSeq
from model.engine.sequence import Sequence
from model.kernels import pointwise
from model.layers.attention import Attention, AttentionMetadata, PrefillSegment, pure_decode_metadata
from model.models.decoder import CausalLM
from model.quant import QuantSpec, describe_quantization, quantize_model, weight_bytes

log = logging.getLogger("glmserve.engine")

CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
PROMPT_LOGPROB_ROWS = 64  # rows per vocabulary projection when scoring a prompt: a (64, vocab) piece stays in cache


@dataclass
class PromptScores:
    """Log-probabilities of consecutive prompt tokens of one sequence, from this step's prefill chunk."""

    seq: Sequence
    first_position: int  # prompt position of the first token scored (>= 1)
    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]  # 1 = the most likely token
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclass
class StepOutput:
    logits: torch.Tensor  # fp32 (rows, vocab): per sampling sequence, in order, 1 + its num_draft rows
    sampling: list[ScheduledSeq]
    prompt_scores: list[PromptScores] = field(default_factory=list)


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


def _plain_argmax(seq: Sequence) -> bool:
    """The sampler's token for this row is the argmax of the raw logits, and nothing reads the rest of them
    (model/engine/sampler.py): greedy, no logprobs, no logit bias, penalties or processors (grammars, thinking
    budgets), no min_tokens ban in force."""
    p = seq.params
    return (p.greedy and p.logprobs is None and not p.logit_bias and not p.needs_penalties
            and not p.logits_processors and seq.num_output_tokens >= p.min_tokens)


class ModelRunner:
    lora = None  # a model.lora.LoRAManager once LLMEngine loads an adapter; it wraps the projections
    fused_decoder = None  # a model.kernels.decode.FusedDecoder when the CPU choices found it faster
    greedy_screen = None  # a model.engine.greedy_screen.GreedyScreen: plain greedy rows skip most of the lm_head

    def __init__(self, model: CausalLM, engine_config: EngineConfig, max_model_len: int) -> None:
        self.model = model
        self.config = model.config
        self.engine_config = engine_config
        self.block_size = engine_config.block_size
        if engine_config.quantization in ("int8", "int4"):  # before the KV cache sizes itself on free memory
            spec = QuantSpec(engine_config.quantization, engine_config.quantization_group_size)
            log.info("quantized %d modules to %s", quantize_model(model, spec), spec.method)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        self.num_blocks = self._num_blocks()
        self.pooler = Pooler()  # embedding requests' running sums
        cfg = self.config
        # (layers, 2, num_blocks, block_size, kv_heads, head_dim)
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, self.num_blocks, self.block_size,
                                    cfg.num_key_value_heads, cfg.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(model.layers):
            layer.attn.kv_cache = self.kv_cache[i]
        if self.device.type == "cpu" and not engine_config.enforce_eager and mkldnn_available():
            self._choose_cpu_paths()
        self.quantization = describe_quantization(model)  # what the model holds, for /v1/models and info
        if engine_config.quantization == "auto" and self.quantization == "none":
            log.info("quantization auto: no stored quantized tensor was loaded (not a GGUF with Q4_0/Q4_1/Q8_0, "
                     "or load_model was not given the engine config); serving float weights")
        self.weight_bytes = weight_bytes(model)
        log.info("KV cache: %d blocks x %d tokens (%.1f MiB)", self.num_blocks, self.block_size,
                 self.kv_cache.numel() * self.kv_cache.element_size() / 2**20)

    def _choose_cpu_paths(self) -> None:
        """Host-dependent tricks, each timed on this model's shapes (model/engine/cpu_choices.py)."""
        start = time.perf_counter()
        batch_rows = min(self.engine_config.max_num_seqs, 32)
        screened = (self.model.lm_head,) if self.engine_config.greedy_screen else ()
        choices = choose_linear_packing(self.model, batch_rows, kernel_for=screened)
        if self.dtype is torch.float32:  # int8/int4 weights: PyTorch's bf16 kernels or the C ones (fp32 activations)
            choose_quant_kernels(self.model, batch_rows)
        layers = [layer.attn for layer in self.model.layers if type(layer.attn) is Attention]
        if layers:
            a = layers[0]
            paths = choose_decode_attention(a.num_heads, a.num_kv_heads, a.head_dim, self.dtype, batch_rows, like=a)
            for attn in layers:
                attn.decode_paths = paths
        if self.dtype in (torch.float32, torch.bfloat16) and (candidates := pointwise.timing_candidates(self.model)):
            # norms with their residual adds, silu * up: C kernels (model/kernels/pointwise.py) or PyTorch
            what = f"norms, residual adds, silu * up, {str(self.dtype)[6:]} x {self.config.hidden_size}"
            choice = pick(what, candidates, sorted({1, batch_rows}))
            if choice.chosen == "kernel":
                pointwise.use_pointwise_kernels(self.model)
            log.info("cpu choice: %s", choice.describe())
        if self.dtype in (torch.float32, torch.bfloat16) and self.model.layers:
            # every layer on C kernels: a pure decode step's layers in one C call (model/kernels/decode.py)
            self.fused_decoder = choose_fused_decoder(self.model, self._synthetic_decode, batch_rows)
        if self.engine_config.greedy_screen and (screen := GreedyScreen.build(self.model.lm_head)) is not None:
            # the int8 product is compute-bound at many rows: the screen serves the row counts it won
            # capped at the head's kernel limit: past it the full product is not the kernel's arithmetic
            screen.max_rows = choose_greedy_screen_rows(screen, min(batch_rows, self.model.lm_head.max_rows))
            self.greedy_screen = screen if screen.max_rows else None
        log.info("linear shapes: %d of %d oneDNN-packed, %d on the C kernel, %d on it for small batches; fused "
                 "decoder %s; greedy screen up to %d rows; CPU choices measured in %.2f s",
                 sum(c.chosen == "packed" for c in choices), len(choices), sum(c.chosen == "kernel" for c in choices),
                 sum(c.kernel_rows > 0 for c in choices), "on" if self.fused_decoder is not None else "off",
                 0 if self.greedy_screen is None else self.greedy_screen.max_rows, time.perf_counter() - start)

    def _synthetic_decode(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """A pure decode step of `rows` sequences for start-up timing: each at position `context - 1` over its
        own scratch blocks of the (still unused) cache, so the step writes and reads those blocks only."""
        bs = self.block_size
        per_seq = max(1, min(4, self.num_blocks // rows))
        context = per_seq * bs
        tables = torch.arange(rows * per_seq, device=self.device).view(rows, per_seq) % self.num_blocks
        meta = pure_decode_metadata(tables, context, bs)
        return torch.zeros(rows, dtype=torch.long, device=self.device), meta.decode_context_lens - 1, meta

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
    def run(self, scheduled: list[ScheduledSeq]) -> StepOutput:
        """One forward pass: logits for the rows that sample, and prompt scores where asked for."""
        # one new token with everything before it cached is a decode, whatever the phase
        prefills = [s for s in scheduled if s.num_tokens > 1]
        decodes = [s for s in scheduled if s.num_tokens == 1]
        if self.lora is not None:  # rows in adapter order: LoRA products added in place (model/lora/layer.py)
            prefills.sort(key=lambda s: s.seq.lora_id)
            decodes.sort(key=lambda s: s.seq.lora_id)
        ordered = prefills + decodes
        input_ids, positions, slots, logits_rows = [], [], [], []
        scored: list[tuple[Sequence, int, int, int]] = []  # (seq, first row, first position scored, count)
        segments: list[PrefillSegment] = []
        pooled: list[PoolingChunk] = []
        row = 0
        bs = self.block_size
        for item in ordered:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_tokens
            input_ids += seq.token_ids[start:end - item.num_draft] + seq.draft_token_ids[:item.num_draft]
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            if item.num_tokens > 1:
                segments.append(PrefillSegment(row, item.num_tokens, end, self._tensor(table)))
            if seq.needs_prompt_logprobs:
                # the logits at position q score prompt token q + 1; skip what an earlier pass scored
                first = max(start, len(seq.prompt_logprobs) - 1)
                last = min(end, seq.num_prompt_tokens - 1)
                if first < last:
                    scored.append((seq, row + first - start, first + 1, last - first))
            if seq.params.pooling is not None:
                pooled.append(PoolingChunk(seq, row, item.num_tokens, start, item.samples))
            row += item.num_tokens
            if item.samples:  # a drafted sequence samples at its last token and at every draft token
                logits_rows += range(row - 1 - item.num_draft, row)
        meta = AttentionMetadata(slot_mapping=self._tensor(slots), prefills=segments,
                                 decode_start=row - len(decodes))
        if self.lora is not None:  # LoRA (model/lora): this step's rows per adapter, one forward for all
            self.lora.prepare_step([(item.seq.lora_id, item.num_tokens) for item in ordered])
        if decodes:
            self._decode_metadata(meta, decodes)
        ids_t, positions_t = self._tensor(input_ids), self._tensor(positions)
        hidden = None
        if self.fused_decoder is not None and not segments and decodes and self.lora is None:
            hidden = self.fused_decoder.forward(ids_t, positions_t, meta)  # None: this step takes the modules
        if hidden is None:
            hidden = self.model(ids_t, positions_t, meta)
        scores = [self._score_prompt(hidden, *job) for job in scored]
        if pooled:
            self.pooler.pool(hidden, pooled)
        sampling = [s for s in ordered if s.samples]
        if not sampling:
            return StepOutput(torch.empty(0, self.config.vocab_size), [], scores)
        # (S, hidden) -> (S, vocab): only the rows that sample pay for the vocabulary projection
        if len(logits_rows) != hidden.shape[0]:  # a pure decode step samples every row: no gather
            hidden = hidden[self._tensor(logits_rows)]
        logits = None
        if (self.greedy_screen is not None and self.lora is None and len(logits_rows) == len(sampling)
                and len(sampling) <= self.greedy_screen.max_rows and all(_plain_argmax(s.seq) for s in sampling)):
            logits = self.greedy_screen.logits(hidden)  # None: this step takes the full product
        if logits is None:
            logits = self.model.compute_logits(hidden).float()
        return StepOutput(logits, sampling, scores)

    def _score_prompt(self, hidden: torch.Tensor, seq: Sequence, first_row: int, first_position: int,
                      count: int) -> PromptScores:
        """Logprobs of prompt tokens first_position .. first_position + count - 1, each from the row before
        it (the last target may be the first token of the next chunk)."""
        k = seq.params.prompt_logprobs or 0
        targets = seq.token_ids[first_position:first_position + count]
        out = PromptScores(seq, first_position, targets, [], [], [], [])
        for lo in range(0, count, PROMPT_LOGPROB_ROWS):
            hi = min(count, lo + PROMPT_LOGPROB_ROWS)
            logits = self.model.compute_logits(hidden[first_row + lo:first_row + hi]).float()
            # logprob = logit - logsumexp: one pass over the logits, no (rows, vocab) log_softmax tensor
            norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            chosen = logits.gather(1, self._tensor(targets[lo:hi]).unsqueeze(1))
            out.logprobs += (chosen - norm).squeeze(1).tolist()
            out.ranks += ((logits > chosen).sum(dim=1) + 1).tolist()
            if k:
                values, ids = logits.topk(k, dim=-1)
                out.top_logprobs += (values - norm).tolist()
                out.top_ids += ids.tolist()
            else:
                out.top_logprobs += [[] for _ in range(hi - lo)]
                out.top_ids += [[] for _ in range(hi - lo)]
        return out

    def _decode_metadata(self, meta: AttentionMetadata, decodes: list[ScheduledSeq]) -> None:
        bs = self.block_size
        context_lens = [s.seq.num_computed_tokens + 1 for s in decodes]
        max_blocks = -(-max(context_lens) // bs)
        tables = [s.seq.block_table[:max_blocks] + [0] * (max_blocks - len(s.seq.block_table[:max_blocks]))
                  for s in decodes]
        meta.decode_block_tables = self._tensor(tables)
        meta.decode_context_len = max(context_lens)
        meta.decode_context_lens = lens = self._tensor(context_lens)  # the C kernel's lengths: it needs no mask
        if len(decodes) == 1:  # attention slices the one context to its length: no mask
            return
        ar = torch.arange(max_blocks * bs, device=self.device)
        meta.decode_mask = (ar.unsqueeze(0) < lens.unsqueeze(1)).view(len(decodes), 1, 1, -1)

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

"""LLMEngine: add_request / abort / step / stats. A step is schedule -> run -> postprocess.

    engine = LLMEngine.from_model("default", EngineConfig())
    outputs = engine.generate(["Hello"], SamplingParams(max_tokens=32))
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

from model.config import EngineConfig
from model.engine.block_manager import BlockManager
from model.engine.cpu_threads import apply_num_threads, thread_tuner_for
from model.engine.model_runner import ModelRunner
from model.engine.ngram_proposer import propose_drafts
from model.engine.output_processor import OutputProcessor
from model.engine.outputs import EngineStats, RequestOutput, RequestRejected
from model.engine.postprocessor import Postprocessor
from model.engine.sampler import Sampler
from model.engine.scheduler import Scheduler
from model.engine.sequence import Sequence
from model.lora import Adapter, AdapterInUse, LoRAManager
from model.loader import LoadedModel, load_model
from model.models.decoder import CausalLM
from model.sampling_params import SamplingParams
from model.tokenizer import Tokenizer

log = logging.getLogger("glmserve.engine")


class LLMEngine:
    def __init__(self, model: CausalLM, engine_config: EngineConfig, tokenizer: Tokenizer | None = None,
                 loaded: LoadedModel | None = None) -> None:
        self.config = engine_config
        self.model_config = model.config
        self.tokenizer = tokenizer
        self.loaded = loaded
        self.max_model_len = min(engine_config.max_model_len or model.config.max_position_embeddings,
                                 model.config.max_position_embeddings)
        self.runner = ModelRunner(model, engine_config, self.max_model_len)
        self.block_manager = BlockManager(self.runner.num_blocks, engine_config.block_size,
                                          engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, engine_config.max_num_seqs, engine_config.max_num_batched_tokens,
                                   engine_config.interleave_prefills)
        eos = tuple(tokenizer.eos_token_ids) if tokenizer else tuple(model.config.eos_token_ids)
        self.sampler = Sampler(eos, self.runner.device)
        self.postprocessor = Postprocessor(self.scheduler, self.block_manager, self.sampler,
                                           OutputProcessor(tokenizer, eos, self.max_model_len))
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tokens generated in the step)
        self.thread_tuner = thread_tuner_for(engine_config.num_threads, self.runner.device.type,
                                             engine_config.adapt_threads and not engine_config.enforce_eager)
        self.lora: LoRAManager | None = None  # made at the first load_lora (the network stays as loaded until then)

    @classmethod
    def from_model(cls, source: str, engine_config: EngineConfig | None = None,
                   cache_dir: str | None = None) -> "LLMEngine":
        ec = engine_config or EngineConfig()
        apply_num_threads(ec.num_threads)  # --num-threads, else the CPUs this process may use (cgroup, affinity)
        # engine_config: the memory preflight (weights + KV cache) and GGUF tensors served as stored
        loaded = load_model(source, device=ec.resolved_device(), dtype=ec.resolved_dtype(), cache_dir=cache_dir,
                            engine_config=ec)
        # a checkpoint without tokenizer files still serves token ids (no text, no stop strings)
        has_tokenizer = any(os.path.exists(os.path.join(loaded.path, f))
                            for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        return cls(loaded.model, ec, Tokenizer(loaded.path, ec.trust_remote_code) if has_tokenizer else None, loaded)

    # ---- requests ----------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raises RequestRejected for a request that could never run. Touches no state."""
        n = len(prompt_token_ids)
        if n == 0:
            raise RequestRejected("the prompt is empty", code="invalid_prompt", param="prompt")
        if n + params.max_tokens > self.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} for the completion).",
                param="max_tokens" if n < self.max_model_len else "messages")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if n + params.max_tokens > capacity:
            raise RequestRejected(
                f"The KV cache holds {capacity} tokens ({self.block_manager.num_blocks} blocks of "
                f"{self.block_manager.block_size}); this request needs {n + params.max_tokens} "
                f"({n} prompt + {params.max_tokens} max_tokens).", code="kv_cache_too_small", param="max_tokens")
        vocab = self.model_config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_token_ids):
            raise RequestRejected(f"prompt token ids must be in [0, {vocab})", code="invalid_prompt", param="prompt")
        params.check_vocab(vocab)
        if params.lora_name is not None and (self.lora is None or params.lora_name not in self.lora.adapters):
            raise RequestRejected(f"no LoRA adapter named {params.lora_name!r} is loaded", code="model_not_found",
                                  param="model")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.validate(prompt_token_ids, params)
        self.enqueue(request_id, prompt_token_ids, params)

    def enqueue(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """add_request for a request that passed validate() already (AsyncEngine checks it before its
        stream starts, on the caller's thread)."""
        if request_id in self.postprocessor.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        lora_id = 0
        if params.lora_name is not None:  # unloaded since validate(): refused, never run on another adapter
            if self.lora is None or params.lora_name not in self.lora.adapters:
                raise RequestRejected(f"the LoRA adapter {params.lora_name!r} was unloaded", code="model_not_found",
                                      param="model")
            lora_id = self.lora.id_of(params.lora_name)
        self.postprocessor.add([Sequence(request_id, list(prompt_token_ids), params, index=i, lora_id=lora_id)
                                for i in range(params.n)])

    # ---- LoRA adapters (model/lora) ------------------------------------------------------------------
    def load_lora(self, name: str, path: str) -> Adapter:
        """Registers the PEFT adapter at path under name; AdapterError (a ValueError) says why not."""
        if self.lora is None:
            self.lora = LoRAManager(self.runner.model, self.config.max_loras, self.config.max_lora_rank,
                                    pack=not self.config.enforce_eager)
            self.runner.lora = self.lora
            self.scheduler.admission_gate = self._lora_gate
        return self.lora.load(name, path)

    def unload_lora(self, name: str) -> Adapter:
        """KeyError when not loaded; AdapterInUse while a live request uses it (it is never cut)."""
        if self.lora is None or name not in self.lora.adapters:
            raise KeyError(name)
        lora_id = self.lora.id_of(name)
        users = sum(1 for seqs in self.postprocessor.requests.values() if any(s.lora_id == lora_id for s in seqs))
        if users:
            raise AdapterInUse(f"the LoRA adapter {name!r} is in use by {users} running request(s)")
        return self.lora.unload(name)

    def loras(self) -> list[Adapter]:
        return list(self.lora.adapters.values()) if self.lora is not None else []

    def _lora_gate(self, seq: Sequence, running: list[Sequence]) -> bool:
        return self.lora.can_admit(seq.lora_id, {s.lora_id for s in running})

    def abort(self, request_id: str) -> list[RequestOutput]:
        return self.postprocessor.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.postprocessor.has_unfinished()

    # ---- the step ----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.config.num_speculative_tokens:
            propose_drafts(self.scheduler.running, self.config.num_speculative_tokens,
                           self.config.speculative_max_batch, self.max_model_len)
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        tuner = self.thread_tuner
        if tuner is not None:
            tuner.before_step()
        start = time.perf_counter()
        outputs = self.postprocessor.process(sched, self.runner.run(sched.scheduled))
        if tuner is not None:
            tuner.after_step(time.perf_counter() - start, sum(s.num_tokens for s in sched.scheduled))
        self._recent.append((time.time(), sum(len(out.token_ids) for out in outputs)))
        return outputs

    # ---- reporting and batch use -------------------------------------------------------------------
    def stats(self) -> EngineStats:
        bm, post = self.block_manager, self.postprocessor
        now = time.time()
        recent = [(t, n) for t, n in self._recent if now - t < 10.0]
        throughput = 0.0
        if len(recent) > 1 and recent[-1][0] > recent[0][0]:
            throughput = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0])
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks, block_size=bm.block_size,
            kv_cache_usage=bm.usage, prefix_cache_queries=bm.prefix_queries, prefix_cache_hits=bm.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions, prompt_tokens_total=post.num_prompt_tokens_total,
            generation_tokens_total=post.num_generation_tokens_total, generation_throughput=throughput,
            max_model_len=self.max_model_len, steps_total=post.num_steps,
            spec_draft_tokens_total=post.num_draft_tokens, spec_accepted_tokens_total=post.num_accepted_draft_tokens)

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> list[list[RequestOutput]]:
        """Offline batch generation: returns, per prompt, one merged RequestOutput per choice."""
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for i, prompt in enumerate(ids):
            self.add_request(f"offline-{i}", prompt, params)
        merged: dict[tuple[str, int], RequestOutput] = {}
        while self.has_unfinished():
            for out in self.step():
                key = (out.request_id, out.index)
                if key in merged:
                    prev = merged[key]
                    prev.token_ids += out.token_ids
                    prev.text_delta += out.text_delta
                    prev.finished, prev.finish_reason = out.finished, out.finish_reason
                    prev.num_output_tokens, prev.stop_reason = out.num_output_tokens, out.stop_reason
                    if out.logprobs:
                        prev.logprobs = (prev.logprobs or []) + out.logprobs
                    prev.prompt_logprobs = prev.prompt_logprobs or out.prompt_logprobs
                else:
                    merged[key] = out
        return [[merged[(f"offline-{i}", j)] for j in range(params.n)] for i in range(len(ids))]

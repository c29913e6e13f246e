r"""Supervised fine-tuning of a checkpoint on chat JSONL, fully or with LoRA.

    glmserve train sft --base default --data model/train/data/glmserve_facts.jsonl --out runs/sft \
        --lora-rank 16 --lora-alpha 32 --epochs 3 --lr 1e-3

The base is anything load_model reads (`default`, an HF dir, a GGUF file). Conversations are rendered
with the base's own chat template and only assistant tokens are targets (chat_data.py). The export
keeps the base's config.json and tokenizer, with LoRA merged into the weights; with --save-adapter-only
it is the adapter alone in PEFT's layout, which `glmserve serve --lora NAME=DIR` and PEFT load:

    glmserve train sft --base default --data facts.jsonl --out runs/facts --lora-rank 8 --save-adapter-only

With --quantization int8|int4 (QLoRA-style) the frozen base is quantized as it loads (model/quant), the
adapters stay in fp32, and the export is always the adapter alone (it cannot be merged into int codes):

    glmserve train sft --base default --data facts.jsonl --out runs/facts --lora-rank 8 --quantization int4
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from model.train.chat_data import load_chat_jsonl
from model.train.config import BaseQuantization, LoraConfig, TrainConfig, fit_to_data
from model.train.data import TokenDataset, data_files_exist, file_sha256
from model.train.distributed import DistInfo, distributed_run
from model.train.export import export_adapter, export_checkpoint, materialize
from model.train.lora import apply_lora, count_parameters
from model.train.provenance import training_args
from model.train.trainer import Trainer, TrainResult

log = logging.getLogger("glmserve.train")


@dataclass
class SFTConfig:
    base: str
    data: str
    train: TrainConfig
    eval_data: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    skip_bad_lines: bool = False
    save_adapter_only: bool = False  # with LoRA: write the PEFT adapter layout instead of a merged checkpoint
    quantization: BaseQuantization = field(default_factory=BaseQuantization)  # QLoRA: a frozen int8/int4 base

    def __post_init__(self) -> None:
        if isinstance(self.quantization, str):
            self.quantization = BaseQuantization(self.quantization)
        self.quantization.check_with(self.lora, self.train.fsdp)
        if self.save_adapter_only and not self.lora.enabled:
            raise ValueError("--save-adapter-only needs --lora-rank > 0")

    @property
    def exports_adapter(self) -> bool:
        """The adapter alone in PEFT's layout: asked for, or the only export a quantized base allows."""
        return self.lora.enabled and (self.save_adapter_only or self.quantization.enabled)


def load_base(cfg: SFTConfig, device: torch.device):
    """fp32 master weights on the CPU (the trainer moves them); a quantized base is built on the training
    device itself (an int4 packing is per device), after a memory preflight of its weights, and is the
    base `glmserve serve --quantization` runs: what the load leaves float (a GGUF's Q8_0 embedding under
    int4) is quantized after it, as the serving runner does."""
    from model.loader import load_model

    if not cfg.quantization.enabled:
        return load_model(cfg.base, device="cpu", dtype=torch.float32)
    from model.config import EngineConfig
    from model.quant import QuantSpec, quantize_model

    q = cfg.quantization
    # kv_cache_memory: training holds no KV cache; the preflight then checks the quantized weights alone
    loaded = load_model(cfg.base, device=str(device), dtype=torch.float32,
                        engine_config=EngineConfig(quantization=q.method, quantization_group_size=q.group_size,
                                                   kv_cache_memory=1))
    quantize_model(loaded.model, QuantSpec(q.method, q.group_size))
    return loaded


def _datasets(cfg: SFTConfig, tokenizer, template) -> tuple[TokenDataset, TokenDataset | None]:
    hf = tokenizer.hf
    eos_id = hf.eos_token_id if hf.eos_token_id is not None else tokenizer.eos_token_ids[0]
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else eos_id

    def load(path: str) -> TokenDataset:
        return load_chat_jsonl(path, template, set(tokenizer.eos_token_ids), eos_id, pad_id, cfg.train.max_len,
                               cfg.skip_bad_lines)

    full = load(cfg.data)
    log.info("sft data: %d conversations, %d target tokens", len(full),
             sum(full.num_label_tokens(i) for i in range(len(full))))
    if cfg.eval_data:
        return full, load(cfg.eval_data)
    return full.split(cfg.train.eval_ratio, cfg.train.seed)


def run_sft(cfg: SFTConfig, info: DistInfo | None = None) -> TrainResult:
    from model.chat_template import ChatTemplate
    from model.tokenizer import Tokenizer
    from model.tool_template import ToolTemplate

    data_files_exist([cfg.data] + ([cfg.eval_data] if cfg.eval_data else []))
    with distributed_run(info, cfg.train.device) as info:
        loaded = load_base(cfg, info.device)
        tokenizer = Tokenizer(loaded.path)
        # tools, tool calls and tool results render exactly as the server will prompt the fine-tuned model
        train_set, eval_set = _datasets(cfg, tokenizer, ToolTemplate(ChatTemplate(tokenizer)))
        model = loaded.model.train()
        if cfg.lora.enabled:
            torch.manual_seed(cfg.train.seed)  # every rank draws the same adapter initialization
            apply_lora(model, cfg.lora)
        trainable, total = count_parameters(model)
        if cfg.quantization.enabled:
            from model.quant import describe_quantization, weight_bytes

            log.info("base %s quantized to %s: %.1f MiB of weights resident, %.2fM trainable adapter params",
                     cfg.base, describe_quantization(model), weight_bytes(model) / 2 ** 20, trainable / 1e6)
        else:
            log.info("base %s: %.1fM params, %.2fM trainable", cfg.base, total / 1e6, trainable / 1e6)
        data_hash = file_sha256([cfg.data])
        quantized = {"quantization": asdict(cfg.quantization)} if cfg.quantization.enabled else {}
        fingerprint = {"data_sha256": data_hash, "base": loaded.path, "lora": asdict(cfg.lora), "task": "sft",
                       **quantized}
        train_cfg = fit_to_data(cfg.train, len(train_set), info.world_size)
        if (train_cfg.batch_size, train_cfg.max_steps) != (cfg.train.batch_size, cfg.train.max_steps):
            log.info("%d training conversations: batch size %d, %s optimizer steps", len(train_set),
                     train_cfg.batch_size, train_cfg.max_steps or "epoch-based")
        trainer = Trainer(model, train_set, eval_set, train_cfg, info, fingerprint)
        result = trainer.train()
        state = trainer.full_state_dict()
        if info.is_main:
            args = training_args("sft", result, train_cfg, info, base=cfg.base, base_path=loaded.path,
                                 base_provenance=loaded.provenance or None, data=[cfg.data], data_sha256=data_hash,
                                 eval_data=cfg.eval_data, num_conversations=len(train_set),
                                 lora=asdict(cfg.lora) if cfg.lora.enabled else None,
                                 trainable_params=trainable, total_params=total,
                                 **quantized)
            if cfg.exports_adapter:
                export_adapter(cfg.train.out_dir, loaded.config, state, cfg.lora, loaded.path, args)
                log.info("exported the LoRA adapter (PEFT layout) to %s", cfg.train.out_dir)
            else:
                merged = materialize(loaded.config, state, cfg.lora)
                export_checkpoint(cfg.train.out_dir, merged, tokenizer.hf, args, base_dir=loaded.path)
                log.info("exported %s", cfg.train.out_dir)
    return result

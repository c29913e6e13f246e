"""Pretraining a GLM-architecture network from a preset on a text corpus.

    glmserve train pretrain --preset glm-tiny --tokenizer runs/tok --data corpus.txt --out runs/tiny

The tokenizer fixes the vocabulary; the preset (model/config.py PRESETS) fixes the shape. The result
is an HF `glm` checkpoint (export.py) that `glmserve serve --model runs/tiny` serves.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from model.config import ModelConfig, check_preset_overrides, preset_config
from model.models.registry import build_model
from model.train.config import TrainConfig
from model.train.data import (TokenDataset, completion_dataset, data_files_exist, file_sha256, is_completion_file,
                              pack_documents)
from model.train.distributed import DistInfo, distributed_run
from model.train.export import export_checkpoint, materialize
from model.train.provenance import training_args
from model.train.tokenizer_train import stop_token_ids
from model.train.trainer import Trainer, TrainResult

log = logging.getLogger("glmserve.train")


@dataclass
class PretrainConfig:
    preset: str
    tokenizer: str
    data: list[str]
    train: TrainConfig
    eval_data: list[str] = field(default_factory=list)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_hidden_layers": 2}
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("pretraining needs --data")
        if self.init_std <= 0:
            raise ValueError("init_std must be positive")


def init_weights(model: nn.Module, std: float) -> None:
    """GPT-2 style: N(0, std) weights, zero biases, residual output projections scaled by
    1/sqrt(2 * layers) so the residual stream's variance does not grow with depth."""
    num_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scaled = name.endswith(("o_proj", "down_proj"))
            nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * num_layers) if scaled else std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def model_config_for(cfg: PretrainConfig, hf_tokenizer) -> ModelConfig:
    overrides = dict(cfg.model_overrides)
    check_preset_overrides(overrides)  # before the tokenizer's vocab_size and token ids are added
    model_cfg = preset_config(cfg.preset, vocab_size=len(hf_tokenizer), eos_token_ids=tuple(stop_token_ids(hf_tokenizer)),
                              pad_token_id=hf_tokenizer.pad_token_id, bos_token_id=hf_tokenizer.bos_token_id,
                              **overrides)
    if cfg.train.max_len > model_cfg.max_position_embeddings:
        raise ValueError(f"max_len {cfg.train.max_len} exceeds the preset's max_position_embeddings "
                         f"{model_cfg.max_position_embeddings}")
    return model_cfg


def _datasets(cfg: PretrainConfig, tokenizer, eos_id: int) -> tuple[TokenDataset, TokenDataset | None]:
    encode = tokenizer.encode  # plain text: control-token strings in the corpus stay plain text
    packed, tail = pack_documents(cfg.data, encode, eos_id, cfg.train.max_len)
    log.info("corpus: %d sequences of %d tokens (%d tail tokens unused)", len(packed), cfg.train.max_len, tail)
    full = TokenDataset(packed, pad_id=eos_id)
    if cfg.eval_data and all(is_completion_file(p) for p in cfg.eval_data):
        return full, completion_dataset(cfg.eval_data, encode, eos_id, cfg.train.max_len)
    if cfg.eval_data:
        return full, TokenDataset(pack_documents(cfg.eval_data, encode, eos_id, cfg.train.max_len)[0], pad_id=eos_id)
    return full.split(cfg.train.eval_ratio, cfg.train.seed)


def run_pretrain(cfg: PretrainConfig, info: DistInfo | None = None) -> TrainResult:
    from model.tokenizer import Tokenizer

    data_files_exist(cfg.data + cfg.eval_data)
    with distributed_run(info, cfg.train.device) as info:
        tokenizer = Tokenizer(cfg.tokenizer)
        hf_tok = tokenizer.hf
        model_cfg = model_config_for(cfg, hf_tok)
        train_set, eval_set = _datasets(cfg, tokenizer, hf_tok.eos_token_id)
        torch.manual_seed(cfg.train.seed)  # every rank builds the same initial weights
        model = build_model(model_cfg)
        init_weights(model, cfg.init_std)
        log.info("model: %s %.2fM params", cfg.preset, sum(p.numel() for p in model.parameters()) / 1e6)
        data_hash = file_sha256(cfg.data)
        fingerprint = {"data_sha256": data_hash, "model": model_cfg.to_dict(), "task": "pretrain"}
        trainer = Trainer(model, train_set, eval_set, cfg.train, info, fingerprint)
        result = trainer.train()
        state = trainer.full_state_dict()
        if info.is_main:
            merged = materialize(model_cfg, state, None)
            args = training_args("pretrain", result, cfg.train, info, data=cfg.data, data_sha256=data_hash,
                                 num_sequences=len(train_set), preset=cfg.preset, tokenizer=cfg.tokenizer,
                                 model_overrides=cfg.model_overrides, model_config=asdict(model_cfg),
                                 eval_data=cfg.eval_data)
            export_checkpoint(cfg.train.out_dir, merged, hf_tok, args, stop_ids=list(model_cfg.eos_token_ids))
            log.info("exported %s", cfg.train.out_dir)
    return result

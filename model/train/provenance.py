"""training_args.json: where an exported checkpoint came from (the server shows it in /v1/models)."""
from __future__ import annotations

import datetime
import importlib.metadata
from dataclasses import asdict
from typing import Any

from model.train.config import TrainConfig
from model.train.distributed import DistInfo
from model.train.trainer import TrainResult


def _version() -> str:
    try:
        return importlib.metadata.version("glmserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def training_args(task: str, result: TrainResult, train: TrainConfig, info: DistInfo, **details: Any) -> dict[str, Any]:
    return {
        "task": task,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "glmserve_version": _version(),
        **details,
        "steps": result.steps,
        "final_train_loss": result.final_train_loss,
        "final_eval_loss": result.final_eval_loss,
        "final_eval_perplexity": result.final_eval_ppl,
        "tokens_seen": result.tokens_seen,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "resumed_from_step": result.resumed_from,
        "world_size": info.world_size,
        "device": str(info.device),
        "train_config": asdict(train),
    }

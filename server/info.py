"""`glmserve info [MODEL]`: load a model and print its config, size and load time.

    glmserve info default
    glmserve info /path/to/checkpoint_dir
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    from model import EngineConfig, Tokenizer, load_model

    parser = argparse.ArgumentParser(prog="glmserve info")
    parser.add_argument("model", nargs="?", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    ec = EngineConfig(dtype=args.dtype, device=args.device)
    loaded = load_model(args.model, device=ec.resolved_device(), dtype=ec.resolved_dtype())
    tok = Tokenizer(loaded.path)
    info = {
        "model": args.model,
        "path": loaded.path,
        "config": loaded.config.to_dict(),
        "num_params": loaded.config.num_params(),
        "dtype": str(ec.resolved_dtype()).replace("torch.", ""),
        "device": ec.resolved_device(),
        "load_seconds": round(loaded.load_seconds, 3),
        "eos_token_ids": list(tok.eos_token_ids),
        "has_chat_template": tok.chat_template is not None,
        "provenance": loaded.provenance,
    }
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0

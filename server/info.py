"""`glmserve info [MODEL]`: load a model and print its config, size and load time.

    glmserve info default
    glmserve info /path/to/checkpoint_dir
    glmserve info default --quantization auto     (the GGUF served as stored: quantization, weight_bytes)
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    from model import (EngineConfig, QuantSpec, Tokenizer, describe_quantization, load_model, quantize_model,
                       weight_bytes)

    parser = argparse.ArgumentParser(prog="glmserve info")
    parser.add_argument("model", nargs="?", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantization", default="none", help="none | int8 | int4 | auto, as `glmserve serve`")
    parser.add_argument("--quantization-group-size", type=int, default=32)
    args = parser.parse_args(argv)
    ec = EngineConfig(dtype=args.dtype, device=args.device, quantization=args.quantization,
                      quantization_group_size=args.quantization_group_size)
    loaded = load_model(args.model, device=ec.resolved_device(), dtype=ec.resolved_dtype(), engine_config=ec)
    if ec.quantization in ("int8", "int4"):  # what the serving engine's runner does after loading
        quantize_model(loaded.model, QuantSpec(ec.quantization, ec.quantization_group_size))
    tok = Tokenizer(loaded.path)
    info = {
        "model": args.model,
        "path": loaded.path,
        "config": loaded.config.to_dict(),
        "num_params": loaded.config.num_params(),
        "dtype": str(ec.resolved_dtype()).replace("torch.", ""),
        "device": ec.resolved_device(),
        "quantization": describe_quantization(loaded.model),
        "weight_bytes": weight_bytes(loaded.model),
        "load_seconds": round(loaded.load_seconds, 3),
        "eos_token_ids": list(tok.eos_token_ids),
        "has_chat_template": tok.chat_template is not None,
        "provenance": loaded.provenance,
    }
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0

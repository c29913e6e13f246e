"""Which tokenizer a checkpoint gets, chosen from its config.json and tokenizer files; no checkpoint code runs.

    backend, family = load_backend(model_dir)            # family: "hf", "chatglm3" or "glm4_tiktoken"

- `model_type: chatglm` with a SentencePiece `tokenizer.model`  -> ChatGLM3's tokenizer (ours)
- `model_type: chatglm` with a tiktoken `tokenizer.model`        -> GLM-4's tokenizer (ours, a fast tokenizer)
- a `tokenizer.json` or a tokenizer class transformers ships     -> transformers' AutoTokenizer
- anything else that names remote code (`auto_map`) is refused, naming the file, unless the operator
  opted in with trust_remote_code (then transformers runs the checkpoint's Python, with a warning).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from model.config import UnsupportedModelError
from model.glm_tokenizers.chatglm3 import CHATGLM3_SPECIAL_TOKENS, ChatGLM3Tokenizer
from model.glm_tokenizers.tiktoken_file import glm4_fast_tokenizer, is_tiktoken_file

log = logging.getLogger("glmserve.tokenizer")

__all__ = ["CHATGLM3_SPECIAL_TOKENS", "ChatGLM3Tokenizer", "RemoteCodeRefused", "load_backend", "tokenizer_family"]


class RemoteCodeRefused(UnsupportedModelError):
    """The checkpoint's tokenizer exists only as Python code shipped with it, and running it was not allowed."""


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tokenizer_family(model_dir: str) -> str:
    """"chatglm3", "glm4_tiktoken" or "hf", from config.json's model_type and the tokenizer.model format."""
    config = _read_json(os.path.join(model_dir, "config.json"))
    model_file = os.path.join(model_dir, "tokenizer.model")
    if config.get("model_type") == "chatglm" and os.path.exists(model_file) \
            and not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return "glm4_tiktoken" if is_tiktoken_file(model_file) else "chatglm3"
    return "hf"


def _remote_tokenizer_file(tok_cfg: dict[str, Any]) -> str | None:
    """The checkpoint Python file its tokenizer_config.json's auto_map points AutoTokenizer at, if any."""
    ref = (tok_cfg.get("auto_map") or {}).get("AutoTokenizer")
    if isinstance(ref, (list, tuple)):
        ref = next((r for r in ref if r), None)
    if not ref:
        return None
    module = ref.split("--")[-1].rsplit(".", 1)[0]
    return module.replace(".", "/") + ".py"


def load_backend(model_dir: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    tok_cfg = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    jinja = os.path.join(model_dir, "chat_template.jinja")  # where transformers 5 saves a template
    if os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            tok_cfg["chat_template"] = f.read()
    family = tokenizer_family(model_dir)
    model_file = os.path.join(model_dir, "tokenizer.model")
    if family == "chatglm3":
        log.info("tokenizer: ChatGLM3 SentencePiece tokenizer.model (glmserve's implementation; the checkpoint's "
                 "%s is not run)", _remote_tokenizer_file(tok_cfg) or "tokenizer code")
        return ChatGLM3Tokenizer(model_file, tok_cfg), family
    if family == "glm4_tiktoken":
        log.info("tokenizer: GLM-4 tiktoken tokenizer.model converted to a fast tokenizer (glmserve's "
                 "implementation; the checkpoint's %s is not run)", _remote_tokenizer_file(tok_cfg) or "tokenizer code")
        return glm4_fast_tokenizer(model_file, tok_cfg), family
    return _load_hf(model_dir, tok_cfg, trust_remote_code), family


def _load_hf(model_dir: str, tok_cfg: dict[str, Any], trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    remote = _remote_tokenizer_file(tok_cfg)
    if remote and trust_remote_code:
        log.warning("tokenizer: running the checkpoint's own %s (--trust-remote-code): it is arbitrary Python "
                    "from %s, executed with the server's permissions", remote, model_dir)
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    try:
        hf = AutoTokenizer.from_pretrained(model_dir)
    except (ValueError, OSError, KeyError) as e:
        if remote:
            raise RemoteCodeRefused(
                f"the tokenizer of {model_dir} is Python code shipped with the checkpoint ({remote}, named by "
                f"tokenizer_config.json's auto_map), and glmserve has no built-in equivalent for it. Either add a "
                f"tokenizer.json (e.g. save the tokenizer with transformers on a trusted machine), or, if you "
                f"trust that file, start with --trust-remote-code (see docs/SECURITY.md)") from e
        raise
    log.info("tokenizer: %s from %s", type(hf).__name__, model_dir)
    return hf

"""Byte-level BPE tokenizer with the GLM special tokens and the GLM-4 chat template.

    glmserve train tokenizer --data corpus.txt --vocab-size 8000 --out runs/tok

Byte-level means every string, in any language, encodes without unknown tokens. The special tokens
take ids 0..6 so every tokenizer trained here agrees on them; the chat template is written into the
tokenizer files, so `transformers`, vLLM and our loader all render chats the same way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from model.chat_template import GLM_CHAT_TEMPLATE
from model.train.data import iter_documents

EOS_TOKEN = "<|endoftext|>"
# GLM-4's control tokens: [gMASK]<sop> open a prompt, role tokens open turns, <|endoftext|> ends text.
GLM_SPECIAL_TOKENS = ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
                      "<|observation|>")
# a turn ends when the next role token (or end of text) is produced: all of them stop generation
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")


@dataclass
class TokenizerTrainConfig:
    data: list[str]
    out_dir: str
    vocab_size: int = 8000
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("at least one corpus file is needed")
        min_vocab = 256 + len(GLM_SPECIAL_TOKENS)  # every byte plus the specials
        if self.vocab_size < min_vocab:
            raise ValueError(f"vocab_size must be >= {min_vocab} (256 bytes + {len(GLM_SPECIAL_TOKENS)} specials)")
        if self.min_frequency < 1:
            raise ValueError("min_frequency must be >= 1")


def _texts(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        yield from iter_documents(path)


def train_tokenizer(cfg: TokenizerTrainConfig) -> str:
    """Trains on cfg.data and saves HF tokenizer files into cfg.out_dir; returns the dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(GLM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(cfg.data), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        additional_special_tokens=[t for t in GLM_SPECIAL_TOKENS if t != EOS_TOKEN],
        chat_template=GLM_CHAT_TEMPLATE, clean_up_tokenization_spaces=False, model_max_length=1 << 20)
    save_tokenizer(fast, cfg.out_dir)
    return cfg.out_dir


def save_tokenizer(hf_tokenizer, out_dir: str) -> None:
    """save_pretrained, then make tokenizer_config.json readable by older readers too (transformers
    4.x, vLLM): transformers 5 keeps the template in chat_template.jinja, names its own backend class
    and spells the extra specials differently."""
    os.makedirs(out_dir, exist_ok=True)
    hf_tokenizer.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    if not os.path.exists(cfg_path):
        return
    with open(cfg_path) as f:
        tok_cfg = json.load(f)
    template = getattr(hf_tokenizer, "chat_template", None)
    if template and "chat_template" not in tok_cfg:
        tok_cfg["chat_template"] = template
    if tok_cfg.get("tokenizer_class") == "TokenizersBackend":  # 5.x-only name; both load this one
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(tok_cfg.get("extra_special_tokens"), list) and "additional_special_tokens" not in tok_cfg:
        tok_cfg["additional_special_tokens"] = tok_cfg["extra_special_tokens"]
    with open(cfg_path, "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)


def stop_token_ids(hf_tokenizer) -> list[int]:
    """Ids that end a generated turn: the eos plus GLM's role tokens where the vocabulary has them."""
    ids = [hf_tokenizer.eos_token_id] if hf_tokenizer.eos_token_id is not None else []
    vocab = hf_tokenizer.get_vocab()
    ids += [vocab[t] for t in STOP_TOKENS if t in vocab]
    return list(dict.fromkeys(ids))

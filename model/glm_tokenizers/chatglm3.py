"""ChatGLM3's tokenizer (THUDM/chatglm3-6b) without running the checkpoint's `tokenization_chatglm.py`.

The published format: SentencePiece ids from `tokenizer.model`, then nine control tokens numbered from
the SentencePiece vocabulary size (`[MASK]` = n, `[gMASK]` = n + 1, ... `<|observation|>` = n + 8). EOS is
SentencePiece's `</s>`. Text is encoded by SentencePiece alone, so control-token strings inside plain text
stay text; template text (allow_special) has the nine strings split out first.

The class speaks the part of the transformers tokenizer API that glmserve uses (encode, decode, vocab
lookups, special tokens) and keeps `sp_model` where xgrammar looks for a SentencePiece tokenizer.
"""
from __future__ import annotations

import re
from typing import Any

CHATGLM3_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                           "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
CHATGLM3_PREFIX = ("[gMASK]", "sop")


class ChatGLM3Tokenizer:
    """SentencePiece + ChatGLM3's appended control tokens; `tokenizer_config` is its tokenizer_config.json."""

    def __init__(self, model_file: str, tokenizer_config: dict[str, Any] | None = None) -> None:
        import sentencepiece as spm

        cfg = tokenizer_config or {}
        self.sp_model = spm.SentencePieceProcessor(model_file=model_file)
        n = self.sp_model.vocab_size()
        self.special_ids = {tok: n + i for i, tok in enumerate(CHATGLM3_SPECIAL_TOKENS)}
        self.special_by_id = {i: tok for tok, i in self.special_ids.items()}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.special_ids, key=len, reverse=True))
                                 + ")")
        self.eos_token_id = self.sp_model.eos_id()
        self.eos_token = self.sp_model.id_to_piece(self.eos_token_id)
        self.pad_token_id = max(self.sp_model.unk_id(), 0)  # ChatGLM3 pads with <unk>
        self.bos_token = None  # prompts open with [gMASK] sop instead
        self.bos_token_id = None
        self.chat_template: str | None = cfg.get("chat_template")
        self.added_tokens_decoder = dict(self.special_by_id)
        self.all_special_tokens = [self.eos_token, self.sp_model.id_to_piece(self.pad_token_id),
                                   *CHATGLM3_SPECIAL_TOKENS]
        self.prefix_token_ids = [self.special_ids[t] for t in CHATGLM3_PREFIX]

    def __len__(self) -> int:
        return self.sp_model.vocab_size() + len(self.special_ids)

    def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = True) -> list[int]:
        """SentencePiece ids of `text`; with split_special_tokens=False the nine control-token strings in it
        become their ids (each piece between them encoded on its own, as the reference tokenizer does)."""
        ids = list(self.prefix_token_ids) if add_special_tokens else []
        if split_special_tokens:
            return ids + (self.sp_model.encode(text) if text else [])
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids += self.sp_model.encode(part)
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Runs of SentencePiece ids decode together; a control token is its string (or nothing)."""
        text, run = [], []
        n = self.sp_model.vocab_size()
        for token_id in token_ids:
            token_id = int(token_id)
            if token_id < n:
                run.append(token_id)
                continue
            if run:
                text.append(self.sp_model.decode(run))
                run = []
            if not skip_special_tokens and token_id in self.special_by_id:
                text.append(self.special_by_id[token_id])
        if run:
            text.append(self.sp_model.decode(run))
        return "".join(text)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        if token_id in self.special_by_id:
            return self.special_by_id[token_id]
        if 0 <= token_id < self.sp_model.vocab_size():
            return self.sp_model.id_to_piece(token_id)
        return None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        if token in self.special_ids:
            return self.special_ids[token]
        token_id = self.sp_model.piece_to_id(token)
        return None if token_id == self.sp_model.unk_id() and token != self.sp_model.id_to_piece(token_id) else token_id

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.sp_model.vocab_size())}
        vocab.update(self.special_ids)
        return vocab

"""Tokenizer: encode/decode, stop ids, UTF-8-safe incremental detokenizing and stop-string matching.

The engine works in token ids; this module turns them into text at the edge. A streamed delta never
ends in half a character: bytes of an incomplete UTF-8 sequence decode to U+FFFD, so text ending in
U+FFFD is held back until the next token completes it.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """The checkpoint's tokenizer. `hf` is a transformers tokenizer, or for ChatGLM3's SentencePiece file
    glmserve's own class with the same methods; `family` says which (model/glm_tokenizers)."""

    def __init__(self, model_dir: str, trust_remote_code: bool = False) -> None:
        from model.glm_tokenizers import load_backend

        self.model_dir = model_dir
        self.hf, self.family = load_backend(model_dir, trust_remote_code)
        self._encode_lock = threading.Lock()
        self.eos_token_ids = _eos_token_ids(model_dir, self.hf)
        self.chat_template: str | None = getattr(self.hf, "chat_template", None)
        self.special_token_strings: list[str] = sorted(
            {t for t in self.hf.all_special_tokens} | {str(t) for t in self.hf.added_tokens_decoder.values()},
            key=len, reverse=True)

    @property
    def prefix_token_ids(self) -> list[int]:
        """What the tokenizer puts before a text prompt (`[gMASK]<sop>` for GLM, BOS for Llama; often nothing)."""
        if not hasattr(self, "_prefix"):
            # what add_special_tokens puts before a probe text's own ids (a suffix such as EOS is not a prefix)
            with self._encode_lock:
                full = list(self.hf.encode("hi", add_special_tokens=True))
                plain = list(self.hf.encode("hi", add_special_tokens=False))
            start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
            self._prefix = full[:start]
        return self._prefix

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_token(self) -> str | None:
        return self.hf.bos_token

    @property
    def eos_token(self) -> str | None:
        return self.hf.eos_token

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Plain text never becomes control tokens unless allow_special (template text) says so.

        Thread-safe: transformers implements split_special_tokens by setting a flag on the shared Rust
        tokenizer and then encoding, so two threads (the event loop and a to_thread chunker) could
        each encode under the other's flag; user text then became control tokens."""
        with self._encode_lock:
            return self.hf.encode(text, add_special_tokens=False, split_special_tokens=not allow_special)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_to_str(self, token_id: int) -> str:
        return self.hf.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> list[int]:
        """The raw bytes of one token (OpenAI's logprobs `bytes`): part of a UTF-8 character when a
        character spans tokens, which its decoded text (U+FFFD) cannot show."""
        piece = self.hf.convert_ids_to_tokens(token_id)
        if piece is None:
            return []
        table = _byte_decoder()
        # byte-level BPE (GPT-2 style, as SmolLM2 and GLM-4 use); a SentencePiece piece is text ("é" is one
        # character there, two UTF-8 bytes, not the byte 0xE9 it stands for in the byte-level alphabet)
        if self.family != "chatglm3" and all(ch in table for ch in piece):
            return [table[ch] for ch in piece]
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
            return [int(piece[3:5], 16)]
        return list(piece.replace("\u2581", " ").encode("utf-8"))

    def detokenizer(self, skip_special_tokens: bool = True) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, skip_special_tokens)


_BYTE_DECODER: dict[str, int] | None = None


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
            list(range(ord("\xae"), ord("\xff") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(bs, cs)}
    return _BYTE_DECODER


def _eos_token_ids(model_dir: str, hf) -> tuple[int, ...]:
    ids: list[int] = []
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    if hf.eos_token_id is not None:
        ids.append(hf.eos_token_id)
    # GLM checkpoints end a turn with any of these; all must stop generation.
    for tok in ("<|user|>", "<|observation|>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"):
        tid = hf.convert_tokens_to_ids(tok) if tok in hf.get_vocab() else None
        if tid is not None and tok in {str(t) for t in hf.added_tokens_decoder.values()}:
            ids.append(tid)
    return tuple(dict.fromkeys(int(i) for i in ids))


@dataclass
class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only complete new text.

    Decodes a short window (prefix_offset..end) rather than the whole sequence each time, so the cost
    per token stays constant; the window's own leading text is subtracted."""

    tokenizer: Tokenizer
    skip_special_tokens: bool = True
    token_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def add(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        full_text = decode(self.token_ids[self.prefix_offset:], self.skip_special_tokens)
        if full_text.endswith(REPLACEMENT_CHAR) or len(full_text) <= len(prefix_text):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        delta = full_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return delta

    def flush(self) -> str:
        """At the end of a sequence: whatever is still held back (a truly broken tail included)."""
        rest = self.tokenizer.decode(self.token_ids[self.prefix_offset:], self.skip_special_tokens)
        prefix = self.tokenizer.decode(self.token_ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        delta = rest[len(prefix):] if len(rest) > len(prefix) else ""
        delta = delta.rstrip(REPLACEMENT_CHAR)
        self.read_offset = len(self.token_ids)
        self.prefix_offset = self.read_offset
        return delta


class StopStringMatcher:
    """Finds stop strings across token boundaries and holds back text that may begin one.

    `push(delta)` returns (text safe to emit, matched stop string or None). The stop string itself and
    anything after it are never emitted."""

    def __init__(self, stops: tuple[str, ...] | list[str], include_stop: bool = False) -> None:
        self.stops = [s for s in stops if s]
        self.include_stop = include_stop
        self.max_hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def push(self, delta: str) -> tuple[str, str | None]:
        if not self.stops:
            return delta, None
        self.pending += delta
        best: tuple[int, str] | None = None
        for stop in self.stops:
            idx = self.pending.find(stop)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is not None:
            idx, stop = best
            out = self.pending[: idx + (len(stop) if self.include_stop else 0)]
            self.pending = ""
            return out, stop
        hold = self._held_suffix_len()
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out, None

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _held_suffix_len(self) -> int:
        # the longest suffix of pending that is a proper prefix of some stop string
        for n in range(min(self.max_hold, len(self.pending)), 0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

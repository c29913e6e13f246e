"""GLM-4's tiktoken `tokenizer.model` (THUDM/glm-4-9b-chat) as a fast `tokenizers` tokenizer.

The file holds one `base64(token bytes) rank` line per token. tiktoken's algorithm: split the text with
GLM-4's regex; a piece that is itself a token is emitted whole; otherwise adjacent parts are merged,
lowest rank of the merged bytes first. That is a byte-level BPE whose merge list is ordered by the rank
of each merge's result, with `ignore_merges` for whole pieces — what transformers' own converter builds.
The control tokens (151329.. on the real checkpoint) come from tokenizer_config.json's
`added_tokens_decoder`; `add_special_tokens=True` prefixes `[gMASK]<sop>` as the reference tokenizer does.
"""
from __future__ import annotations

import base64
import re
from typing import Any

# the pre-tokenizer regex of glm-4-9b-chat's tokenization_chatglm.py (cl100k_base's pattern)
GLM4_PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_PREFIX = ("[gMASK]", "<sop>")
_LINE = re.compile(rb"^([A-Za-z0-9+/]+={0,2}) (\d+)$")


def is_tiktoken_file(path: str) -> bool:
    """A text file whose first line is `base64 rank` (a SentencePiece model is a binary protobuf)."""
    with open(path, "rb") as f:
        first = f.readline(4096).strip()
    return _LINE.match(first) is not None


def read_ranks(path: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            m = _LINE.match(line)
            if m is None:
                raise ValueError(f"{path}:{number}: not a `base64 rank` line")
            ranks[base64.b64decode(m.group(1))] = int(m.group(2))
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet of tokenizer.json files)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    chars = _byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [(ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges += [(text(token[:i]), text(token[i:])) for _, _, i in sorted(splits)]
    return vocab, merges


def glm4_fast_tokenizer(model_file: str, tokenizer_config: dict[str, Any]) -> Any:
    """A transformers PreTrainedTokenizerFast equivalent to GLM-4's tiktoken tokenizer."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    ranks = read_ranks(model_file)
    vocab, merges = bpe_vocab_and_merges(ranks)
    backend = RustTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    added = sorted((int(i), spec["content"] if isinstance(spec, dict) else str(spec))
                   for i, spec in (tokenizer_config.get("added_tokens_decoder") or {}).items())
    for expected, (token_id, content) in enumerate(added, start=len(ranks)):
        if token_id != expected:
            raise ValueError(f"{model_file}: control token {content!r} has id {token_id}; expected {expected} "
                             f"(control tokens follow the {len(ranks)} ranks without gaps)")
    backend.add_special_tokens([AddedToken(c, special=True, normalized=False) for _, c in added])
    contents = {c for _, c in added}
    if all(t in contents for t in GLM4_PREFIX):
        prefix = " ".join(GLM4_PREFIX)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{prefix} $A", pair=f"{prefix} $A $B",
            special_tokens=[(t, backend.token_to_id(t)) for t in GLM4_PREFIX])
    names = {k: tokenizer_config.get(k) for k in ("eos_token", "pad_token", "unk_token", "bos_token")}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=tokenizer_config.get("chat_template"),
        clean_up_tokenization_spaces=False, model_max_length=tokenizer_config.get("model_max_length", 1 << 30),
        **{k: (v["content"] if isinstance(v, dict) else v) for k, v in names.items() if v})

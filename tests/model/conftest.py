"""Replicas of the GLM hub checkpoints (tests/helpers/glm_replicas.py), built once per session, and
reference tokenizers written here from the published formats, independent of glmserve's code.

    chatglm3_dir, glm4_chat_dir, glm4_chat_hf_dir, glm4_0414_dir, glm_z1_dir    replica directories
    RefChatGLM3(dir)      chatglm3-6b's tokenization_chatglm.py: SentencePiece + 9 appended control tokens,
                          build_chat_input's segment-wise chat encoding
    RefGlm4Tiktoken(dir)  glm-4-9b-chat's tiktoken tokenizer: regex split, whole-piece lookup, lowest-rank
                          merges; control tokens from tokenizer_config.json split out of template text
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import regex

from tests.helpers import glm_replicas

CHATGLM3_COMMANDS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]
# tokenization_chatglm.py of THUDM/glm-4-9b-chat
GLM4_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class RefChatGLM3:
    def __init__(self, model_dir: str) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(Path(model_dir) / "tokenizer.model"))
        self.command = {t: self.sp.vocab_size() + i for i, t in enumerate(CHATGLM3_COMMANDS)}
        self.index_command = {i: t for t, i in self.command.items()}

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        text, buffer = "", []
        for i in ids:
            if i in self.index_command:
                text += self.sp.decode(buffer) + self.index_command[i] if buffer else self.index_command[i]
                buffer = []
            else:
                buffer.append(i)
        return text + (self.sp.decode(buffer) if buffer else "")

    def single_message(self, role: str, metadata: str, message: str) -> list[int]:
        return [self.command[f"<|{role}|>"]] + self.encode(f"{metadata}\n") + self.encode(message)

    def chat_input(self, history: list[dict]) -> list[int]:
        """build_chat_input(query=history[-1], history=history[:-1]) with its [gMASK] sop prefix."""
        ids = [self.command["[gMASK]"], self.command["sop"]]
        for item in history:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids += self.single_message(item["role"], item.get("metadata", ""), content)
        return ids + [self.command["<|assistant|>"]]


class RefGlm4Tiktoken:
    def __init__(self, model_dir: str) -> None:
        self.ranks: dict[bytes, int] = {}
        for line in (Path(model_dir) / "tokenizer.model").read_bytes().splitlines():
            if line.strip():
                token, rank = line.split()
                self.ranks[base64.b64decode(token)] = int(rank)
        self.by_rank = {r: t for t, r in self.ranks.items()}
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.specials = {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()}
        self.pat = regex.compile(GLM4_PAT)
        self.special_pat = regex.compile("(" + "|".join(map(regex.escape, sorted(self.specials, key=len,
                                                                                  reverse=True))) + ")")

    def _bpe(self, piece: bytes) -> list[int]:
        if piece in self.ranks:
            return [self.ranks[piece]]
        parts = [bytes([b]) for b in piece]
        while len(parts) > 1:
            scored = [(self.ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            scored = [(r, i) for r, i in scored if r is not None]
            if not scored:
                break
            _, i = min(scored)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.ranks[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        return [i for piece in self.pat.findall(text) for i in self._bpe(piece.encode("utf-8"))]

    def encode_template_text(self, text: str) -> list[int]:
        """The rendered chat: control-token strings split out, the text between them encoded."""
        ids: list[int] = []
        for j, part in enumerate(self.special_pat.split(text)):
            ids += [self.specials[part]] if j % 2 else self.encode(part)
        return ids

    def decode(self, ids: list[int]) -> str:
        by_id = {i: t.encode() for t, i in self.specials.items()}
        return b"".join(self.by_rank.get(i, by_id.get(i, b"")) for i in ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="session")
def glm_replicas_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glm-replicas")


@pytest.fixture(scope="session")
def chatglm3_dir(glm_replicas_root: Path) -> str:
    return glm_replicas.build_chatglm3_replica(glm_replicas_root / "chatglm3-6b")


@pytest.fixture(scope="session")
def glm4_chat_dir(glm_replicas_root: Path) -> str:
    return glm_replicas.build_glm4_chat_replica(glm_replicas_root / "glm-4-9b-chat")


@pytest.fixture(scope="session")
def glm4_chat_hf_dir(glm_replicas_root: Path) -> str:
    return glm_replicas.build_glm4_chat_hf_replica(glm_replicas_root / "glm-4-9b-chat-hf")


@pytest.fixture(scope="session")
def glm4_0414_dir(glm_replicas_root: Path) -> str:
    return glm_replicas.build_glm4_0414_replica(glm_replicas_root / "GLM-4-9B-0414")


@pytest.fixture(scope="session")
def glm_z1_dir(glm_replicas_root: Path) -> str:
    return glm_replicas.build_glm_z1_replica(glm_replicas_root / "GLM-Z1-9B-0414")

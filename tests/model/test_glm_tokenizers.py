"""glmserve's own tokenizers for the remote-code GLM checkpoints, byte-exact against references written
from the published formats (tests/model/conftest.py), and the choice of tokenizer per checkpoint."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from model import Tokenizer
from model.glm_tokenizers import RemoteCodeRefused
from tests.model.conftest import RefChatGLM3, RefGlm4Tiktoken

TEXTS = [
    "Hello world", "你好，北京今天天气很好。", "emoji 😀🎉 and ZWJ 👩‍💻", "  leading spaces", "trailing   ",
    "tabs\tand\n\nnewlines\r\n", "\n", " ", "code:\n    def f(x):\n        return x  # 注释\n",
    "numbers 1234567 3.14159", "mixed中文English混合123", "[gMASK]sop<|user|> typed by a user", "ｆｕｌｌｗｉｄｔｈ",
    "don't we'll they're I'M", "a" * 40, "", "\u00e9\u0301 combining", "\x00 nul and \u200b zero width",
]


@pytest.fixture(scope="module")
def chatglm3(chatglm3_dir: str) -> tuple[Tokenizer, RefChatGLM3]:
    return Tokenizer(chatglm3_dir), RefChatGLM3(chatglm3_dir)


@pytest.fixture(scope="module")
def glm4(glm4_chat_dir: str) -> tuple[Tokenizer, RefGlm4Tiktoken]:
    return Tokenizer(glm4_chat_dir), RefGlm4Tiktoken(glm4_chat_dir)


def test_families_are_chosen_from_config_and_tokenizer_file(chatglm3_dir, glm4_chat_dir, glm4_chat_hf_dir,
                                                            glm4_0414_dir, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="glmserve.tokenizer"):
        families = [Tokenizer(d).family for d in (chatglm3_dir, glm4_chat_dir, glm4_chat_hf_dir, glm4_0414_dir)]
    assert families == ["chatglm3", "glm4_tiktoken", "hf", "hf"]
    logged = caplog.text
    assert "ChatGLM3 SentencePiece" in logged and "GLM-4 tiktoken" in logged and "tokenization_chatglm.py" in logged


@pytest.mark.parametrize("text", TEXTS)
def test_chatglm3_encode_and_decode_equal_the_reference(chatglm3, text: str) -> None:
    ours, ref = chatglm3
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == ref.sp.decode(ids)


def test_chatglm3_control_tokens_follow_the_sentencepiece_vocabulary(chatglm3) -> None:
    ours, ref = chatglm3
    n = ref.sp.vocab_size()
    assert [ours.hf.convert_tokens_to_ids(t) for t in ref.command] == list(range(n, n + 9))
    assert ours.prefix_token_ids == [n + 1, n + 3]  # [gMASK] sop
    assert ours.eos_token == "</s>" and ours.eos_token_ids[0] == 2
    assert set(ours.eos_token_ids) == {2, n + 6, n + 8}  # </s>, <|user|>, <|observation|> end a turn
    mixed = [n + 1, n + 3, n + 6, *ref.encode("\n"), *ref.encode("你好 😀"), n + 7]
    assert ours.decode(mixed, skip_special_tokens=False) == ref.decode(mixed)
    assert ours.decode(mixed) == ref.sp.decode(ref.encode("\n") + ref.encode("你好 😀")) == "\n 你好 😀"


def test_chatglm3_user_text_never_becomes_a_control_token(chatglm3) -> None:
    ours, ref = chatglm3
    ids = ours.encode("<|user|>[gMASK]sop<|assistant|>")
    assert not set(ids) & set(ref.index_command)
    assert ours.encode("<|user|>hi", allow_special=True) == [ref.command["<|user|>"], *ref.encode("hi")]


@pytest.mark.parametrize("text", TEXTS)
def test_glm4_tiktoken_encode_and_decode_equal_the_reference(glm4, text: str) -> None:
    ours, ref = glm4
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == text


def test_glm4_tiktoken_control_tokens_and_prefix(glm4, glm4_chat_dir: str) -> None:
    ours, ref = glm4
    base = len(ref.ranks)
    assert ref.specials["<|endoftext|>"] == base and ref.specials["<|end_of_video|>"] == base + 13
    assert {t: ours.hf.convert_tokens_to_ids(t) for t in ref.specials} == ref.specials
    assert ours.prefix_token_ids == [ref.specials["[gMASK]"], ref.specials["<sop>"]]
    generation = json.loads((Path(glm4_chat_dir) / "generation_config.json").read_text())
    assert set(ours.eos_token_ids) == set(generation["eos_token_id"])
    text = "<|user|>\n你好<|assistant|>"
    assert ours.encode(text, allow_special=True) == ref.encode_template_text(text)
    assert not set(ours.encode(text)) & set(ref.specials.values())


def test_glm4_tiktoken_incremental_decoding_never_splits_a_character(glm4) -> None:
    ours, _ = glm4
    text = "天气😀 很好 👩‍💻!"
    detok = ours.detokenizer()
    streamed = "".join(detok.add(i) for i in ours.encode(text)) + detok.flush()
    assert streamed == text


def test_chatglm3_incremental_decoding_equals_decoding_the_whole(chatglm3) -> None:
    ours, ref = chatglm3
    text = "你好 world 😀 two  spaces\nnext line"
    ids = ref.encode(text)
    detok = ours.detokenizer()
    assert "".join(detok.add(i) for i in ids) + detok.flush() == ref.sp.decode(ids)


def _remote_only_copy(src: str, dest: Path) -> str:
    """A checkpoint whose tokenizer exists only as remote code glmserve does not implement."""
    shutil.copytree(src, dest)
    (dest / "tokenizer.json").unlink()
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]},
               tokenizer_class="CustomTokenizer")
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    (dest / "tokenization_custom.py").write_text('raise RuntimeError("tokenization_custom.py was executed")\n')
    return str(dest)


def test_remote_code_tokenizer_is_refused_by_default_and_runs_only_when_trusted(glm4_0414_dir, tmp_path,
                                                                                caplog) -> None:
    path = _remote_only_copy(glm4_0414_dir, tmp_path / "custom")
    with pytest.raises(RemoteCodeRefused, match=r"tokenization_custom\.py.*--trust-remote-code"):
        Tokenizer(path)
    # opted in, transformers imports the checkpoint's file: the inert replica raises when run
    with caplog.at_level(logging.WARNING, logger="glmserve.tokenizer"), \
            pytest.raises(Exception, match="tokenization_custom.py was executed"):
        Tokenizer(path, trust_remote_code=True)
    assert "--trust-remote-code" in caplog.text and "tokenization_custom.py" in caplog.text


def test_known_glm_checkpoints_never_run_their_remote_code_even_when_trusted(chatglm3_dir, glm4_chat_dir) -> None:
    # the replicas' tokenization_chatglm.py raises if imported; ours is used whatever the flag says
    assert Tokenizer(chatglm3_dir, trust_remote_code=True).family == "chatglm3"
    assert Tokenizer(glm4_chat_dir, trust_remote_code=True).family == "glm4_tiktoken"


def test_serve_refuses_a_remote_code_checkpoint_naming_the_file(glm4_0414_dir, tmp_path, capsys) -> None:
    from server.__main__ import main

    path = _remote_only_copy(glm4_0414_dir, tmp_path / "custom")
    assert main(["--model", path, "--self-test", "off", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot serve" in err and "tokenization_custom.py" in err and "--trust-remote-code" in err
    # the flag reaches the tokenizer: now the checkpoint's file is imported (and the inert replica raises)
    with pytest.raises(Exception, match="tokenization_custom.py was executed"):
        main(["--model", path, "--self-test", "off", "--port", "0", "--trust-remote-code"])


def test_tiktoken_conversion_is_exact_on_a_full_size_vocabulary(tmp_path: Path) -> None:
    """49k ranks (the default model's byte-level merges, in merge order) cover what a 500-token replica
    cannot: tokens reachable by several splits, long whole-piece lookups."""
    import base64

    from model import resolve_model_dir
    from model.glm_tokenizers.tiktoken_file import glm4_fast_tokenizer
    from tests.helpers.glm_replicas import GLM4_SPECIALS, _glm4_added_tokens, _gpt2_chars

    spec = json.loads((Path(resolve_model_dir("default")) / "tokenizer.json").read_text(encoding="utf-8"))
    byte_of = {c: b for b, c in enumerate(_gpt2_chars())}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in spec["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault(bytes(byte_of[c] for c in left + right), len(ranks))
    with open(tmp_path / "tokenizer.model", "wb") as f:
        for token, rank in ranks.items():
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    config = {"added_tokens_decoder": _glm4_added_tokens(len(ranks)), "eos_token": GLM4_SPECIALS[0]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = glm4_fast_tokenizer(str(tmp_path / "tokenizer.model"), config), RefGlm4Tiktoken(str(tmp_path))
    text = Path(__file__).read_text(encoding="utf-8")[:6000] + "".join(TEXTS)  # code, prose, Chinese, emoji
    lines = text.splitlines(keepends=True)
    assert [ours.encode(t, add_special_tokens=False, split_special_tokens=True) for t in lines] == \
        [ref.encode(t) for t in lines]


def test_token_bytes_are_each_pieces_own_bytes(chatglm3, glm4) -> None:
    ours, ref = chatglm3
    sp = ref.sp
    for i in range(sp.vocab_size()):
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)):
            assert bytes(ours.token_bytes(i)) == sp.id_to_piece(i).replace("\u2581", " ").encode(), i
    ours, ref = glm4
    assert all(bytes(ours.token_bytes(rank)) == token for token, rank in ref.ranks.items())


def test_a_chat_template_jinja_file_is_the_template(glm4_chat_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "glm4"
    shutil.copytree(glm4_chat_dir, path)
    (path / "chat_template.jinja").write_text("[gMASK]<sop>{{ messages[0].content }}", encoding="utf-8")
    assert Tokenizer(str(path)).chat_template == "[gMASK]<sop>{{ messages[0].content }}"

"""The trained tokenizer: GLM special tokens, byte-level round trips, the chat template in its files."""
from __future__ import annotations

import json
import os

from model.train.tokenizer_train import GLM_SPECIAL_TOKENS


def test_special_tokens_are_single_ids_in_a_fixed_order(glm_tokenizer) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(glm_tokenizer)
    assert [tok.convert_tokens_to_ids(t) for t in GLM_SPECIAL_TOKENS] == list(range(len(GLM_SPECIAL_TOKENS)))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.encode("[gMASK]<sop><|user|>", add_special_tokens=False) == [1, 2, 4]


def test_byte_level_round_trip_of_unseen_text(glm_tokenizer) -> None:
    from model.tokenizer import Tokenizer

    tok = Tokenizer(glm_tokenizer)
    for text in ["naïve café ☕ — 東京タワー 🚀", "  leading spaces\n\ttabs", "reverse: z y x = x y z"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # plain text that spells a control token stays plain text
    assert 4 not in tok.encode("<|user|>")


def test_chat_template_is_written_and_renders_the_glm4_format(glm_tokenizer) -> None:
    from transformers import AutoTokenizer

    with open(os.path.join(glm_tokenizer, "tokenizer_config.json")) as f:
        assert "[gMASK]<sop>" in json.load(f)["chat_template"]
    tok = AutoTokenizer.from_pretrained(glm_tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "[gMASK]<sop><|system|>\nBe brief.<|user|>\n你好<|assistant|>"


def test_our_template_encoding_equals_transformers(glm_tokenizer) -> None:
    from transformers import AutoTokenizer

    from model.chat_template import ChatTemplate
    from model.tokenizer import Tokenizer

    messages = [{"role": "user", "content": "reverse: a b c ="}, {"role": "assistant", "content": "c b a"},
                {"role": "user", "content": "again"}]
    ours = ChatTemplate(Tokenizer(glm_tokenizer)).encode(messages)
    hf = AutoTokenizer.from_pretrained(glm_tokenizer).apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=True, return_dict=False)
    assert ours == list(hf)


def test_stop_ids_cover_eos_and_turn_tokens(glm_tokenizer) -> None:
    from model.tokenizer import Tokenizer

    tok = Tokenizer(glm_tokenizer)
    stops = {tok.hf.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")}
    assert stops <= set(tok.eos_token_ids)


def test_cli_dispatch_trains_a_tokenizer(reverse_data, tmp_path) -> None:
    from server.cli import main

    out = tmp_path / "tok"
    assert main(["train", "tokenizer", "--data", reverse_data[0], "--vocab-size", "300", "--out", str(out)]) == 0
    with open(out / "tokenizer.json") as f:
        assert json.load(f)["model"]["type"] == "BPE"

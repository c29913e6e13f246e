"""`glmserve serve --model DIR` on a faithful tiny replica of zai-org/GLM-4.5-Air (model_type glm4_moe:
routed + shared experts, bf16 shards with its MTP layer, GLM-4.5's tokenizer tokens and chat template)
starts unchanged and answers a chat through the openai SDK with transformers' greedy tokens."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.live_server import SubprocessServer

MESSAGES = [{"role": "user", "content": "你好，请介绍一下北京。"}]
MAX_TOKENS = 12
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}}}}}]
# tools, a system turn, and an earlier answer whose reasoning the template drops (it precedes the last user turn)
TOOL_CHAT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "北京天气？"},
             {"role": "assistant", "content": "北京今天晴。", "reasoning_content": "想一想"},
             {"role": "user", "content": "明天呢？"}]


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> str:
    from tests.helpers.glm_replicas import build_glm4_moe_replica

    return build_glm4_moe_replica(tmp_path_factory.mktemp("zai-org") / "GLM-4.5-Air")


def _transformers_greedy(path: str) -> tuple[list[bytes], str]:
    """transformers' greedy reply as each token's raw bytes, and its finish reason."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.glm_replicas import _gpt2_chars

    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    # stops at generation_config.json's eos ids (<|endoftext|>, <|user|>, <|observation|>), as the server must
    new = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)[0, len(ids):].tolist()
    eos = set(hf.generation_config.eos_token_id)
    finish = "stop" if new[-1] in eos else "length"
    new = [t for t in new if t not in eos]
    byte_of = {ch: b for b, ch in enumerate(_gpt2_chars())}  # byte-level BPE: one stand-in character per byte
    added = {i: t.content for i, t in tok.added_tokens_decoder.items()}
    # ids in the vocabulary's padding (config vocab_size rounds the tokenizer's up) are no token: no bytes
    pieces = [added[i].encode() if i in added else bytes(byte_of[c] for c in tok.convert_ids_to_tokens(i) or "")
              for i in new]
    return pieces, finish


def test_glmserve_serves_the_glm45_air_replica_with_transformers_greedy_output(replica: str) -> None:
    import httpx
    from openai import OpenAI
    from transformers import AutoTokenizer

    expected, finish = _transformers_greedy(replica)
    template_ids = AutoTokenizer.from_pretrained(replica).apply_chat_template(
        TOOL_CHAT, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    with SubprocessServer(["--model", replica, "--self-test", "off", "--max-model-len", "512"]) as srv:
        client = OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS,
                                               logprobs=True)
        tokenized = httpx.post(srv.base_url + "/tokenize", timeout=60,
                               json={"model": model, "messages": TOOL_CHAT, "tools": TOOLS}).json()
    # tools, system and earlier turns render as the checkpoint's own chat_template.jinja does
    assert tokenized["tokens"] == template_ids
    choice = reply.choices[0]
    # compared token by token (raw bytes): the text depends on which control tokens the server shows
    got = [bytes(lp.bytes) for lp in choice.logprobs.content]
    assert got[:len(expected)] == expected and len(got) - len(expected) <= 1  # the stop token may be listed
    assert choice.finish_reason == finish
    assert reply.usage.completion_tokens >= len(expected)

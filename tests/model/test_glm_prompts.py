"""Chat, tool and tool-result prompts of each GLM replica equal, token for token, what the family's
published template or tokenizer code builds from the same conversation in the family's own message
format (written out by hand below, as each family's tool demo passes it):

    chatglm3-6b        build_chat_input (reference in conftest.py)
    glm-4-9b-chat      its jinja template (tokenizer_config.json) + the tiktoken reference tokenizer
    -hf, 0414, Z1      transformers' apply_chat_template on the replica's tokenizer.json
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model import ChatTemplate, Tokenizer, ToolTemplate
from tests.model.conftest import RefChatGLM3, RefGlm4Tiktoken
from tests.structured.conftest import WEATHER_TOOL

TOOLS = [WEATHER_TOOL]
ARGS = '{"city": "北京", "unit": "celsius"}'
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
SYSTEM = {"role": "system", "content": "你是天气助手，回答要简短。"}
CHAT = [SYSTEM, {"role": "user", "content": "你好 👋"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "Tell me a joke  with  spaces\n\nand lines."}]
TOOL_CHAT = [{"role": "user", "content": "北京天气怎么样？"},
             {"role": "assistant", "content": None, "tool_calls": [CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'}]
CHATGLM3_INTRO = "Answer the following questions as best as you can. You have access to the following tools:"


def _glm_turns(with_system: bool) -> list[dict]:
    """The tool chat in GLM's own turns: a call is an assistant turn named by metadata, a result an
    observation turn."""
    return ([SYSTEM] if with_system else []) + [
        {"role": "user", "content": "北京天气怎么样？"},
        {"role": "assistant", "metadata": "get_weather", "content": ARGS},
        {"role": "observation", "content": '{"temperature": 22}'}]


def _ours(model_dir: str, messages: list[dict], tools: list[dict] | None = None, **extra) -> list[int]:
    return ToolTemplate(ChatTemplate(Tokenizer(model_dir))).encode(messages, tools, **extra)


def _hf_ids(model_dir: str, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    from transformers import AutoTokenizer

    out = AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ---- ChatGLM3 ------------------------------------------------------------------------------------------
def test_chatglm3_chat_is_build_chat_input(chatglm3_dir: str) -> None:
    assert _ours(chatglm3_dir, CHAT) == RefChatGLM3(chatglm3_dir).chat_input(CHAT)


@pytest.mark.parametrize("with_system", [False, True])
def test_chatglm3_tools_call_and_result_are_build_chat_input(chatglm3_dir: str, with_system: bool) -> None:
    # ChatGLM3's tool demo: function descriptions on one system turn after its instruction (a client's
    # system message leads that turn), a call as metadata + a python tool_call block
    system = {"role": "system", "content": (SYSTEM["content"] + "\n" if with_system else "") + CHATGLM3_INTRO,
              "tools": [WEATHER_TOOL["function"]]}
    history = [system, {"role": "user", "content": "北京天气怎么样？"},
               {"role": "assistant", "metadata": "get_weather",
                "content": '```python\ntool_call(city="北京", unit="celsius")\n```'},
               {"role": "observation", "content": '{"temperature": 22}'}]
    messages = ([SYSTEM] if with_system else []) + TOOL_CHAT
    assert _ours(chatglm3_dir, messages, TOOLS) == RefChatGLM3(chatglm3_dir).chat_input(history)


def test_chatglm3_style_is_known_from_the_checkpoint_not_its_added_tokens(chatglm3_dir: str) -> None:
    bridge = ToolTemplate(ChatTemplate(Tokenizer(chatglm3_dir)))
    assert bridge.style == "chatglm3" and bridge.mode == "chatglm3"


# ---- glm-4-9b-chat (tiktoken) --------------------------------------------------------------------------
def _glm4_reference(model_dir: str, messages: list[dict]) -> list[int]:
    """glm-4-9b-chat's apply_chat_template: its jinja rendered as transformers does, then tokenized."""
    config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                                  ensure_ascii=ensure_ascii)
    text = env.from_string(config["chat_template"]).render(messages=messages, add_generation_prompt=True)
    return RefGlm4Tiktoken(model_dir).encode_template_text(text)


def test_glm4_chat_is_its_template(glm4_chat_dir: str) -> None:
    assert _ours(glm4_chat_dir, CHAT) == _glm4_reference(glm4_chat_dir, CHAT)


@pytest.mark.parametrize("with_system", [False, True])
def test_glm4_tools_call_and_result_are_its_template(glm4_chat_dir: str, with_system: bool) -> None:
    turns = _glm_turns(with_system)
    if with_system:
        turns[0] = {**turns[0], "tools": TOOLS}
    else:
        turns.insert(0, {"role": "system", "content": "", "tools": TOOLS})
    messages = ([SYSTEM] if with_system else []) + TOOL_CHAT
    assert _ours(glm4_chat_dir, messages, TOOLS) == _glm4_reference(glm4_chat_dir, turns)


# ---- tokenizer.json checkpoints: transformers is the reference ---------------------------------------------
@pytest.fixture(params=["hf", "0414", "z1"])
def hf_glm_dir(request, glm4_chat_hf_dir: str, glm4_0414_dir: str, glm_z1_dir: str) -> str:
    return {"hf": glm4_chat_hf_dir, "0414": glm4_0414_dir, "z1": glm_z1_dir}[request.param]


def test_hf_glm_chat_is_apply_chat_template(hf_glm_dir: str) -> None:
    assert _ours(hf_glm_dir, CHAT) == _hf_ids(hf_glm_dir, CHAT)


@pytest.mark.parametrize("with_system", [False, True])
def test_hf_glm_tools_call_and_result_are_apply_chat_template(hf_glm_dir: str, with_system: bool) -> None:
    messages = ([SYSTEM] if with_system else []) + TOOL_CHAT
    turns = _glm_turns(with_system)
    if "item['tools']" in Tokenizer(hf_glm_dir).chat_template:  # glm-4-9b-chat-hf: tools ride on a system turn
        if with_system:
            turns[0] = {**turns[0], "tools": TOOLS}
        else:
            turns.insert(0, {"role": "system", "content": "", "tools": TOOLS})
        expected = _hf_ids(hf_glm_dir, turns)
    else:  # 0414 / Z1: the template reads `tools` itself
        expected = _hf_ids(hf_glm_dir, turns, TOOLS)
    assert _ours(hf_glm_dir, messages, TOOLS) == expected


def test_glm4_0414_renders_calls_its_own_way(glm4_0414_dir: str) -> None:
    text = ToolTemplate(ChatTemplate(Tokenizer(glm4_0414_dir))).render(TOOL_CHAT, TOOLS)
    assert "<|assistant|>get_weather \n" + ARGS in text  # the 0414 template's space after the name
    assert "ChatGLM" not in text  # not glm-4-9b-chat's self-introduction


def test_z1_history_drops_earlier_reasoning_and_opens_a_think_block(glm_z1_dir: str) -> None:
    chat = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>easy</think>\n\n2"},
            {"role": "user", "content": "2+2?"}]
    ids = _ours(glm_z1_dir, chat)
    assert ids == _hf_ids(glm_z1_dir, chat)
    text = Tokenizer(glm_z1_dir).decode(ids, skip_special_tokens=False)
    assert "easy" not in text and text.endswith("<|assistant|>\n<think>")


def test_template_kwargs_reach_the_template(glm4_0414_dir: str) -> None:
    source = "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}<|assistant|>" \
             "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    template = ChatTemplate(Tokenizer(glm4_0414_dir), source)
    chat = [{"role": "user", "content": "hi"}]
    assert template.render(chat, enable_thinking=False).endswith("<|assistant|><think></think>")
    assert template.render(chat).endswith("<|assistant|>")

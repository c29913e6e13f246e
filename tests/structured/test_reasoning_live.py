"""Reasoning and GLM-4.5 XML tool calls over HTTP, from a model that really generates them: a 2-layer GLM-4
whose tokenizer has GLM-4.5's control tokens and a GLM-4.5-layout chat template, fine-tuned here (a few
hundred AdamW steps on one conversation) until greedy decoding emits exactly
    <think>REASONING</think>\\n<tool_call>get_weather\\n<arg_key>city</arg_key>\\n<arg_value>Paris</arg_value>...
for the scripted question. The openai SDK then reads it back streamed and not, through a live server
whose --reasoning-parser is left on auto (the template mentions <think>)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from openai import OpenAI

from tests.helpers.live_server import ThreadedServer
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL

TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GLM45_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
                "</arg_value>"]
REASONING = "The user asks about Paris. I should call get_weather."
CALL = ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n</tool_call>")
SCRIPT = f"<think>{REASONING}</think>\n{CALL}"
# the GLM-4.5 layout: tools in a system turn with the XML call format (names only here, to keep the
# prompt short for the 400-token vocabulary), thinking after <|assistant|>,
# `\n<think></think>` added to the generation prompt when enable_thinking is false
TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>\n# Tools\n{% for tool in tools %}{{ tool.function.name }}\n{% endfor %}"
    "Call a tool as:\n<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}"
    "</arg_value>\n...\n</tool_call>{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}<|user|>\n{{ m.content }}"
    "{%- elif m.role == 'assistant' -%}<|assistant|>\n<think>{{ m.reasoning_content or '' }}</think>\n{{ m.content }}"
    "{%- elif m.role == 'tool' -%}<|observation|>\n<tool_response>\n{{ m.content }}\n</tool_response>"
    "{%- elif m.role == 'system' -%}<|system|>\n{{ m.content }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>"
    "{{- '\\n<think></think>' if (enable_thinking is defined and not enable_thinking) else '' -}}{%- endif -%}"
)


def _prompt_and_target(model_dir: str) -> tuple[list[int], list[int]]:
    """The exact prompt ids the server renders for ASK + TOOLS, and the scripted reply (+ <|observation|>)."""
    from model import ChatTemplate, Tokenizer, ToolTemplate
    from server.protocol import ChatCompletionRequest

    tokenizer = Tokenizer(model_dir)
    body = ChatCompletionRequest(messages=ASK, tools=TOOLS)
    prompt = ToolTemplate(ChatTemplate(tokenizer)).encode(body.template_messages(), body.template_tools())
    target = tokenizer.encode(SCRIPT, allow_special=True) + tokenizer.encode("<|observation|>", allow_special=True)
    return prompt, target


def build_scripted_glm45(dest: Path, tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoTokenizer, Glm4Config, Glm4ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_tokens(GLM45_TOKENS, special_tokens=True)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(dest)
    prompt, target = _prompt_and_target(str(dest))
    torch.manual_seed(0)
    config = Glm4Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                        attention_bias=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = Glm4ForCausalLM(config)
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[-100] * len(prompt) + target])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model: more threads only contend (seconds become minutes)
    try:
        _fit(model, optimizer, ids, labels, len(prompt))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    assert _greedy(model, prompt, len(target)) == target, "the tiny model did not learn its script"
    model.save_pretrained(dest)
    return str(dest)


def _fit(model, optimizer, ids, labels, num_prompt: int) -> None:
    for _ in range(400):
        out = model(input_ids=ids, labels=labels)
        # every next-token argmax on the script is the script, with a margin (low loss) so that the
        # server's own kernels, rounding differently from transformers, still decode it greedily
        exact = bool((out.logits[0, num_prompt - 1:-1].argmax(-1) == ids[0, num_prompt:]).all())
        if exact and out.loss.item() < 0.02:
            return
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def scripted(glm_tokenizer_dir: str, tmp_path_factory: pytest.TempPathFactory):
    from server.settings import Settings

    dest = tmp_path_factory.mktemp("scripted-glm45")
    for path in Path(glm_tokenizer_dir).iterdir():
        shutil.copy(path, dest / path.name)
    path = build_scripted_glm45(dest, glm_tokenizer_dir)
    settings = Settings(model=path, served_model_name="glm45", max_num_seqs=4, kv_cache_memory="32MiB",
                        self_test="off", num_threads=1)
    with ThreadedServer(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(scripted: ThreadedServer) -> OpenAI:
    return OpenAI(base_url=scripted.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _create(client: OpenAI, **extra):
    return client.chat.completions.create(**{"model": "glm45", "messages": ASK, "tools": TOOLS, "temperature": 0,
                                             "max_tokens": 96, **extra})


def test_reasoning_and_the_xml_call_come_back_separately(client: OpenAI, scripted: ThreadedServer) -> None:
    reply = _create(client)
    choice = reply.choices[0]
    block = scripted.engine.tokenizer.encode(f"<think>{REASONING}</think>", allow_special=True)
    assert reply.usage.completion_tokens_details.reasoning_tokens == len(block)
    extra = choice.message.model_extra
    assert extra["reasoning_content"] == REASONING and extra["reasoning"] == REASONING
    assert choice.message.content is None and choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_streamed_reasoning_then_call_lose_and_duplicate_nothing(client: OpenAI, scripted: ThreadedServer) -> None:
    chunks = list(_create(client, stream=True, stream_options={"include_usage": True}))
    block = scripted.engine.tokenizer.encode(f"<think>{REASONING}</think>", allow_special=True)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == len(block)
    chunks = chunks[:-1]
    reasoning, content, names, arguments, order = "", "", [], "", []
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            assert extra["reasoning"] == extra["reasoning_content"]
            reasoning += extra["reasoning_content"]
            order.append("reasoning")
        if delta.content:
            content += delta.content
            order.append("content")
        for call in delta.tool_calls or []:
            if call.function.name:
                names.append(call.function.name)
            arguments += call.function.arguments or ""
            order.append("tool")
    assert reasoning == REASONING and content == "" and names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert order == sorted(order, key=["reasoning", "content", "tool"].index) and order.count("reasoning") > 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_thinking_token_budget_closes_the_block(client: OpenAI, scripted: ThreadedServer) -> None:
    tokenizer = scripted.engine.tokenizer
    reasoning_ids = tokenizer.encode(REASONING)
    choice = _create(client, extra_body={"thinking_token_budget": 4}, max_tokens=12).choices[0]
    # the first four reasoning tokens of the script, then the forced </think>
    assert choice.message.model_extra["reasoning_content"] == tokenizer.decode(reasoning_ids[:4]).strip()


def test_forced_named_call_in_xml_after_free_reasoning(client: OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    choice = _create(client, tool_choice=named, max_tokens=120).choices[0]
    assert choice.message.model_extra["reasoning_content"] == REASONING  # the gate left the reasoning alone
    [call] = choice.message.tool_calls
    assert call.function.name == "get_time" and choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), TIME_TOOL["function"]["parameters"])


def test_enable_thinking_false_parses_no_reasoning(client: OpenAI) -> None:
    choice = _create(client, tool_choice="none", max_tokens=8,
                     extra_body={"chat_template_kwargs": {"enable_thinking": False}}).choices[0]
    assert choice.message.model_extra["reasoning_content"] is None


def test_negative_budget_is_a_400(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError):
        _create(client, extra_body={"thinking_token_budget": -1})


@pytest.mark.parametrize("parser,expected", [("auto", "glm45"), ("none", None), ("deepseek_r1", "deepseek_r1")])
def test_reasoning_parser_setting_and_what_the_prompt_says(scripted: ThreadedServer, parser: str, expected) -> None:
    from model import ChatTemplate
    from server.metrics import ServerMetrics
    from server.protocol import ChatCompletionRequest
    from server.serving.openai.choice import plan_reasoning, server_reasoning_format
    from server.settings import Settings
    from server.state import ServerState

    engine = scripted.engine
    state = ServerState(Settings(model=engine.model_path, reasoning_parser=parser, self_test="off"), engine,
                        ServerMetrics("glm45"))
    fmt, why = server_reasoning_format(state)
    assert (fmt.name if fmt else None) == expected and why.startswith(parser)
    template = ChatTemplate(engine.tokenizer)
    thinking = ChatCompletionRequest(messages=ASK)
    plan = plan_reasoning(state, thinking, template.encode(ASK))
    assert (plan.fmt.name if plan else None) == expected
    off = ChatCompletionRequest(messages=ASK, chat_template_kwargs={"enable_thinking": False})
    assert plan_reasoning(state, off, template.encode(ASK, enable_thinking=False)) is None
    # a prompt whose template closed the block (`<think></think>`) expects no reasoning either
    closed = template.encode(ASK, enable_thinking=False)
    assert plan_reasoning(state, thinking, closed) is None

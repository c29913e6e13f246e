"""The GLM tool bridge over HTTP: a random 2-layer GLM-4 with a GLM tokenizer (control tokens, GLM-4 chat
template) behind a live server. Its text is noise, so these tests use what the grammar guarantees:
forced calls in GLM-4's `name\\n{json}` format, read back through `<|assistant|>`-aware parsing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from openai import OpenAI

from tests.helpers.live_server import ThreadedServer
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL, assert_forced_call

TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK = [{"role": "user", "content": "北京天气怎么样？"}]


def build_tiny_glm4(dest: Path, tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoTokenizer, Glm4Config, Glm4ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = Glm4Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                        attention_bias=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    Glm4ForCausalLM(config).save_pretrained(dest)
    for path in Path(tokenizer_dir).iterdir():
        shutil.copy(path, dest / path.name)
    return str(dest)


@pytest.fixture(scope="module")
def glm_server(glm_tokenizer_dir: str, tmp_path_factory: pytest.TempPathFactory):
    from server.settings import Settings

    path = build_tiny_glm4(tmp_path_factory.mktemp("tiny-glm4"), glm_tokenizer_dir)
    settings = Settings(model=path, served_model_name="glm", max_num_seqs=4, kv_cache_memory="32MiB",
                        self_test="off")
    with ThreadedServer(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def glm(glm_server: ThreadedServer) -> OpenAI:
    return OpenAI(base_url=glm_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_forced_call_in_glm4_format_is_parsed(glm: OpenAI) -> None:
    reply = glm.chat.completions.create(model="glm", messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=160, temperature=0)
    assert_forced_call(reply.choices[0], TOOLS)


def test_forced_call_streams_and_the_result_goes_back_as_an_observation(glm: OpenAI, glm_server) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    chunks = list(glm.chat.completions.create(model="glm", messages=ASK, tools=TOOLS, tool_choice=named,
                                              max_tokens=160, temperature=0, stream=True))
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and deltas[0].function.name == "get_time"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), TIME_TOOL["function"]["parameters"])
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": deltas[0].id, "type": "function", "function": {"name": "get_time", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": deltas[0].id, "content": '{"time": "14:05"}'}]
    rendered = glm_server.engine.chat_template.render(history, TOOLS)
    assert f"<|assistant|>get_time\n{arguments}<|observation|>\n" in rendered
    final = glm.chat.completions.create(model="glm", messages=history, tools=TOOLS, tool_choice="none",
                                        max_tokens=8, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length") and not final.choices[0].message.tool_calls


def test_json_schema_on_a_glm_model(glm: OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "sunny": {"type": "boolean"}}, "required": ["city", "sunny"]}
    reply = glm.chat.completions.create(
        model="glm", messages=ASK, max_tokens=80, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)

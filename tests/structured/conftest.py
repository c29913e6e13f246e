"""Fixtures for structured output and tool calling.

    default_tokenizer   model.Tokenizer of the default model (SmolLM2: ChatML, Hermes-style tools)
    glm_tokenizer_dir   a byte-level BPE tokenizer trained here with GLM-4's control tokens and template
"""
from __future__ import annotations

import pytest

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 24}},
                   "required": ["zone"]}}}


def assert_forced_call(choice, tools: list[dict]):
    """A reply to tool_choice "required": finish_reason tool_calls, no content, and a first call whose
    arguments validate against its tool's parameters. Returns that call."""
    import json

    import jsonschema

    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    return call


@pytest.fixture(scope="session")
def default_tokenizer():
    from model import Tokenizer, resolve_model_dir

    return Tokenizer(resolve_model_dir("default"))


@pytest.fixture(scope="session")
def glm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from model.train.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    corpus = tmp_path_factory.mktemp("glm-corpus") / "corpus.txt"
    corpus.write_text("GLM models call tools and answer in Chinese and English.\n\n你好，北京今天天气很好。\n\n"
                      '{"city": "Beijing", "unit": "celsius"}\n' * 20, encoding="utf-8")
    out = str(tmp_path_factory.mktemp("glm-tok"))
    return train_tokenizer(TokenizerTrainConfig([str(corpus)], out, vocab_size=400))

"""GLM-4.5 / 4.6 / 4.7 XML tool calls (server/serving/openai/tool_parsers/glm45.py) on texts in the layout
their chat templates render, streamed at every cut, and forced by an XML grammar (model/structured.py)
whose every output parses back into a schema-valid call (as the GLM-4 and ChatGLM3 grammars' do)."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from model import StructuredOutputs, Tokenizer
from server.serving.openai.tool_parsers import ToolCallStream, parser_for, xml_call_variant
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL

SEARCH_TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "query": {"type": "string", "maxLength": 16}, "limit": {"type": "integer", "minimum": 1, "maximum": 9},
    "filters": {"type": "object"}, "exact": {"type": "boolean"}}, "required": ["query", "limit"]}}}
NOW_TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL, SEARCH_TOOL, NOW_TOOL]

GLM45_TWO_CALLS = ("I'll look both up.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n"
                   "<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n</tool_call>\n"
                   "<tool_call>get_time\n<arg_key>zone</arg_key>\n<arg_value>Asia/Shanghai</arg_value>\n</tool_call>")
GLM47_TYPED = ("<tool_call>search<arg_key>query</arg_key><arg_value>123</arg_value><arg_key>limit</arg_key>"
               "<arg_value>5</arg_value><arg_key>filters</arg_key><arg_value>{\"lang\": \"zh\"}</arg_value>"
               "<arg_key>exact</arg_key><arg_value>true</arg_value></tool_call>")


def calls(result) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in result.tool_calls]


def test_glm45_layout_content_then_two_calls() -> None:
    result = parser_for("glm45", TOOLS).parse(GLM45_TWO_CALLS)
    assert result.content == "I'll look both up."
    assert calls(result) == [("get_weather", {"city": "北京", "unit": "celsius"}), ("get_time", {"zone": "Asia/Shanghai"})]


def test_glm47_name_before_the_first_key_and_values_typed_by_schema() -> None:
    result = parser_for("glm47", TOOLS).parse(GLM47_TYPED)
    # query is a string in the schema, so "123" stays text; the others are JSON
    assert calls(result) == [("search", {"query": "123", "limit": 5, "filters": {"lang": "zh"}, "exact": True})]
    assert result.content is None


def test_glm47_zero_argument_call() -> None:
    result = parser_for("glm47", TOOLS).parse("<tool_call>now</tool_call>")
    assert calls(result) == [("now", {})]


def test_string_values_are_kept_raw_with_their_newlines() -> None:
    text = "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>a \"quoted\"\nline</arg_value>\n</tool_call>"
    assert calls(parser_for("glm45", TOOLS).parse(text)) == [("search", {"query": 'a "quoted"\nline'})]


def test_a_non_string_value_that_is_not_json_falls_back_to_text() -> None:
    text = "<tool_call>search<arg_key>limit</arg_key><arg_value>five</arg_value></tool_call>"
    assert calls(parser_for("glm47", TOOLS).parse(text)) == [("search", {"limit": "five"})]


@pytest.mark.parametrize("text", [
    "<tool_call>delete_files<arg_key>path</arg_key><arg_value>/</arg_value></tool_call>",  # undeclared tool
    "<tool_call>get_time<arg_key>zone</arg_key>UTC</tool_call>",  # a key without a value
    "<tool_call>get_time<arg_key>zone</arg_key><arg_value>a</arg_value><arg_key>zone</arg_key>"
    "<arg_value>b</arg_value></tool_call>",  # a repeated key
    "<tool_call>get_time<arg_key>zone</arg_key><arg_value>UTC",  # cut by max_tokens
])
def test_malformed_blocks_stay_content_as_written(text: str) -> None:
    result = parser_for("glm45", TOOLS).parse(text)
    assert result.tool_calls == [] and result.content == text


def test_a_malformed_block_does_not_hide_a_good_one() -> None:
    bad = "<tool_call>nope</tool_call>"
    result = parser_for("glm45", TOOLS).parse(bad + "\n<tool_call>now</tool_call>")
    assert calls(result) == [("now", {})] and result.content == bad


def test_plain_text_without_calls_is_unchanged() -> None:
    text = "Use <b>bold</b> and a < b.\n"
    assert parser_for("glm45", TOOLS).parse(text).content == text


def _streamed(style: str, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    stream = ToolCallStream(parser_for(style, TOOLS))
    deltas = [d for p in pieces for d in stream.push(p)] + stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    got: dict[int, list[str]] = {}
    for d in deltas:
        for call in d.get("tool_calls", []):
            if "id" in call:
                assert call["index"] not in got  # one header per call, before its arguments
                got[call["index"]] = [call["function"]["name"], ""]
            else:
                got[call["index"]][1] += call["function"]["arguments"]
    return content, [(name, args) for name, args in (got[i] for i in sorted(got))]


@pytest.mark.parametrize("style,text", [
    ("glm45", GLM45_TWO_CALLS), ("glm47", GLM47_TYPED), ("glm47", "Hi <tool_call>now</tool_call> bye"),
    ("glm45", "<tool_call>nope</tool_call>\n<tool_call>now</tool_call>"),
    ("glm45", "<tool_call>get_time<arg_key>zone</arg_key><arg_value>UTC"),
])
def test_streaming_cut_at_every_character_equals_the_parse(style: str, text: str) -> None:
    expected = parser_for(style, TOOLS).parse(text)
    want = (expected.content or "", [(c.name, c.arguments) for c in expected.tool_calls])
    for cut in range(len(text) + 1):
        assert _streamed(style, [text[:cut], text[cut:]]) == want, cut
    assert _streamed(style, list(text)) == want


def test_each_call_streams_as_soon_as_its_block_closes() -> None:
    stream = ToolCallStream(parser_for("glm45", TOOLS))
    first_end = GLM45_TWO_CALLS.index("</tool_call>") + len("</tool_call>")
    deltas = stream.push(GLM45_TWO_CALLS[:first_end])
    assert [d["tool_calls"][0]["function"].get("name") for d in deltas if "tool_calls" in d] == ["get_weather", None]
    assert stream.has_tool_calls


def test_glm4_0414_call_with_the_space_its_template_writes_after_the_name() -> None:
    # GLM-4-0414 renders a call turn as `<|assistant|>{{ meta }} \n{{ content }}`; the model writes it so
    result = parser_for("glm4", TOOLS).parse('get_weather \n{"city": "Paris", "unit": "celsius"}')
    assert calls(result) == [("get_weather", {"city": "Paris", "unit": "celsius"})] and result.content is None


def test_template_variant_detection() -> None:
    glm45 = "{% for k, v in _args.items() %}\n<arg_key>{{ k }}</arg_key>\n<arg_value>{{ v }}</arg_value>\n"
    glm47 = "{% for k, v in _args.items() %}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}</arg_value>"
    assert xml_call_variant(glm45) == "glm45" and xml_call_variant(glm47) == "glm47"
    assert xml_call_variant("<|assistant|>{{ m.metadata }}") is None


# ---- forcing by grammar ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glm_outputs(glm_tokenizer_dir: str) -> tuple[Tokenizer, StructuredOutputs]:
    tokenizer = Tokenizer(glm_tokenizer_dir)
    return tokenizer, StructuredOutputs.for_tokenizer(tokenizer, tokenizer.vocab_size)


def _decode_random(processor, eos: tuple[int, ...], vocab_size: int, seed: int, max_tokens: int = 400) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < max_tokens:
        row = processor(list(out), torch.randn(vocab_size, generator=gen) * 3)
        token = int(torch.multinomial(torch.softmax(row, -1), 1, generator=gen))
        if token in eos:
            return out
        out.append(token)
    raise AssertionError("grammar did not finish within max_tokens")


@pytest.mark.parametrize("style", ["glm45", "glm47", "glm4", "chatglm3"])
@pytest.mark.parametrize("seed", range(3))
def test_forced_calls_in_each_glm_format_parse_and_validate(glm_outputs, style: str, seed: int) -> None:
    tokenizer, outputs = glm_outputs
    parser = parser_for(style, TOOLS)
    grammar = outputs.tool_calls([parser.call_shape(n) for n in ("get_weather", "search", "now")])
    ids = _decode_random(outputs.processor(grammar), tokenizer.eos_token_ids, tokenizer.vocab_size, seed)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if style in ("glm45", "glm47"):  # XML, not JSON
        assert text.lstrip("\n").startswith("<tool_call>") and text.endswith("</tool_call>")
    result = parser.parse(text)
    assert len(result.tool_calls) == 1 and result.content is None, text
    call = result.tool_calls[0]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.name]
    jsonschema.validate(json.loads(call.arguments), schema)


def test_the_xml_grammar_accepts_the_template_layout_and_refuses_json(glm_outputs) -> None:
    import xgrammar as xgr

    tokenizer, outputs = glm_outputs
    grammar = outputs.tool_calls([parser_for("glm45", TOOLS).call_shape("get_time")])

    def accepts(text: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar)
        return all(matcher.accept_token(t) for t in tokenizer.encode(text)) and matcher.is_terminated() or \
            matcher.accept_token(tokenizer.eos_token_ids[0])

    assert accepts("\n<tool_call>get_time\n<arg_key>zone</arg_key>\n<arg_value>UTC</arg_value>\n</tool_call>")
    assert not accepts('\n<tool_call>get_time\n{"zone": "UTC"}</tool_call>')

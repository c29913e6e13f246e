"""Tool-call parsers on fixed examples in each family's published format (GLM-4 openai demo / tool
docs, ChatGLM3 PROMPT.md, Qwen 2.5 function-calling docs, Llama 3.1 JSON tool calling)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.serving.openai.tool_parsers import ToolCallStream, parser_for
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL

CURRENT_WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}
TOOLS = [CURRENT_WEATHER, WEATHER_TOOL, TIME_TOOL]


def calls(result) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in result.tool_calls]


# ---- GLM-4 -----------------------------------------------------------------------------------------
def test_glm4_call_is_the_metadata_line_and_json_body() -> None:
    result = parser_for("glm4", TOOLS).parse('get_current_weather\n{"location": "Beijing", "unit": "celsius"}')
    assert calls(result) == [("get_current_weather", {"location": "Beijing", "unit": "celsius"})]
    assert result.content is None


def test_glm4_text_answer_drops_the_empty_metadata_line() -> None:
    result = parser_for("glm4", TOOLS).parse("\n北京今天晴，气温 22 摄氏度。")
    assert result.tool_calls == [] and result.content == "北京今天晴，气温 22 摄氏度。"


def test_glm4_text_then_call_in_a_second_assistant_turn() -> None:
    text = '\nLet me check.<|assistant|>get_time\n{"zone": "Asia/Shanghai"}'
    result = parser_for("glm4", TOOLS).parse(text)
    assert calls(result) == [("get_time", {"zone": "Asia/Shanghai"})] and result.content == "Let me check."


@pytest.mark.parametrize("text", [
    'get_weather_v2\n{"city": "Paris"}',  # a longer name is not a declared tool: no prefix guessing
    'get_weather\n{"city": "Paris"',  # truncated JSON
    'get_weather\n["Paris"]',  # arguments must be an object
    '\nSure.<|assistant|>delete_files\n{"path": "/"}',  # a later turn naming an undeclared tool
])
def test_glm4_malformed_or_undeclared_calls_come_back_as_text(text: str) -> None:
    result = parser_for("glm4", TOOLS).parse(text)
    assert result.tool_calls == []
    assert result.content == text.lstrip("\n").replace("<|assistant|>", "")


# ---- ChatGLM3 --------------------------------------------------------------------------------------
PROMPT_MD_CALL = 'get_current_weather\n```python\ntool_call(location="beijing", unit="celsius")\n```'


def test_chatglm3_published_tool_call() -> None:
    result = parser_for("chatglm3", TOOLS).parse(PROMPT_MD_CALL)
    assert calls(result) == [("get_current_weather", {"location": "beijing", "unit": "celsius"})]


def test_chatglm3_text_turn_then_call_turn() -> None:
    text = "\nOkay, let's look up the weather in Bejing today.<|assistant|>" + PROMPT_MD_CALL
    result = parser_for("chatglm3", TOOLS).parse(text)
    assert result.content == "Okay, let's look up the weather in Bejing today."
    assert calls(result)[0][0] == "get_current_weather"


def test_chatglm3_literals_python_and_json_spellings() -> None:
    body = 'get_time\n```python\ntool_call(zone="UTC", dst=True, offset=-1.5, tags=["a", null], extra={"k": false})\n```'
    assert calls(parser_for("chatglm3", TOOLS).parse(body)) == [
        ("get_time", {"zone": "UTC", "dst": True, "offset": -1.5, "tags": ["a", None], "extra": {"k": False}})]


@pytest.mark.parametrize("code", [
    'tool_call(zone=open("{marker}", "w"))',  # eval() in the official demo would create the file
    'tool_call(zone=__import__("os").system("touch {marker}"))',
    'tool_call("UTC")',  # positional arguments are not the format
    'tool_call(**{{"zone": "UTC"}})',
    'other_call(zone="UTC")',
])
def test_chatglm3_code_is_parsed_never_run(code: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = "get_time\n```python\n" + code.format(marker=marker) + "\n```"
    result = parser_for("chatglm3", TOOLS).parse(text)
    assert result.tool_calls == [] and result.content == text
    assert not marker.exists()


# ---- Hermes / Qwen 2.5 / SmolLM2 ---------------------------------------------------------------------
def test_hermes_parallel_calls_and_surrounding_text() -> None:
    text = ('I will look both up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n'
            '</tool_call>')
    result = parser_for("hermes", TOOLS).parse(text)
    assert calls(result) == [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"zone": "CET"})]
    assert result.content == "I will look both up."


def test_hermes_arguments_given_as_a_json_string() -> None:
    text = '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}\n</tool_call>'
    assert calls(parser_for("hermes", TOOLS).parse(text)) == [("get_time", {"zone": "UTC"})]


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}',  # never closed
    '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',  # undeclared tool
    "<tool_call>\nget_time(zone='UTC')\n</tool_call>",  # not JSON
    '<tool_call>\n{"name": "get_time", "arguments": [1]}\n</tool_call>',
])
def test_hermes_malformed_calls_come_back_as_text(text: str) -> None:
    result = parser_for("hermes", TOOLS).parse(text)
    assert result.tool_calls == [] and result.content == text


# ---- Llama 3.1 ---------------------------------------------------------------------------------------
def test_llama3_json_call_with_and_without_python_tag() -> None:
    parser = parser_for("llama3", TOOLS)
    plain = '{"name": "get_time", "parameters": {"zone": "UTC"}}'
    assert calls(parser.parse(plain)) == [("get_time", {"zone": "UTC"})]
    assert calls(parser.parse("<|python_tag|>" + plain)) == [("get_time", {"zone": "UTC"})]
    assert parser.parse('{"name": "nope", "parameters": {}}').tool_calls == []


# ---- streaming ------------------------------------------------------------------------------------
def replay(stream: ToolCallStream, text: str, piece: int) -> tuple[str, dict[int, dict]]:
    """Feeds text in pieces; returns the streamed content and the tool calls the deltas assemble."""
    deltas = []
    for i in range(0, len(text), piece):
        deltas += stream.push(text[i:i + piece])
    deltas += stream.finish()
    content, tool_calls = "", {}
    for delta in deltas:
        content += delta.get("content", "")
        for tc in delta.get("tool_calls", []):
            entry = tool_calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            entry["name"] += tc.get("function", {}).get("name") or ""
            entry["arguments"] += tc["function"].get("arguments", "")
    return content, tool_calls


@pytest.mark.parametrize("style,text", [
    ("glm4", '\nLet me check.<|assistant|>get_time\n{"zone": "Asia/Shanghai"}'),
    ("chatglm3", "\nOkay.<|assistant|>" + PROMPT_MD_CALL),
    ("hermes", 'Checking.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'),
    ("llama3", '{"name": "get_time", "parameters": {"zone": "UTC"}}'),
    ("hermes", "No tools needed: 2 < 3 and <tool is not a tag."),
    ("glm4", 'get_weather\n{"city": "Par'),
])
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streamed_deltas_assemble_what_the_parser_reads(style: str, text: str, piece: int) -> None:
    parsed = parser_for(style, TOOLS).parse(text)
    content, tool_calls = replay(ToolCallStream(parser_for(style, TOOLS)), text, piece)
    assert [(c["name"], json.loads(c["arguments"])) for c in tool_calls.values()] == calls(parsed)
    assert (parsed.content or "").startswith(content.strip()) and content.strip() == (parsed.content or "").strip()


def test_forced_call_streams_arguments_before_the_call_ends() -> None:
    parser = parser_for("hermes", TOOLS)
    stream = ToolCallStream(parser, [parser.call_shape("get_weather"), parser.call_shape("get_time")])
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
    per_push = [stream.push(p) for p in pieces] + [stream.finish()]
    deltas = [d for ds in per_push for d in ds]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    first_args = next(i for i, ds in enumerate(per_push) if any(d["tool_calls"][0]["function"]["arguments"] for d in ds))
    assert first_args < len(pieces) - 5  # arguments flow while the call is still being generated
    streamed = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas)
    assert json.loads(streamed) == {"city": "Paris", "unit": "celsius"} and stream.has_tool_calls

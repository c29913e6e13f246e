"""Reasoning split out of a choice (server/serving/openai/reasoning.py, choice.py) and the logits processors
that steer it (model/engine/thinking.py): fixed texts in the published layouts of GLM-4.5 / 4.7, Z1, Qwen3
and DeepSeek-R1; every streamed cut gives the non-streamed result; the budget and the grammar gate on
token ids, checked against rows computed by hand."""
from __future__ import annotations

import pytest
import torch

from model import ReasoningGate, ThinkingBudgetProcessor, ThinkSpan
from server.serving.openai.choice import ChoiceStream, ReasoningPlan, parse_choice
from server.serving.openai.reasoning import (REASONING_FORMATS, ReasoningSplitter, detect_reasoning_format,
                                             parse_reasoning, prompt_closes_reasoning, prompt_opens_reasoning)
from server.serving.openai.structured import ToolPlan
from server.serving.openai.tool_parsers import parser_for
from tests.structured.conftest import TIME_TOOL, WEATHER_TOOL

GLM, QWEN, R1 = REASONING_FORMATS["glm45"], REASONING_FORMATS["qwen3"], REASONING_FORMATS["deepseek_r1"]
GLM45_CALL = ("<think>The user wants Paris weather.\nI should call get_weather.</think>\n"
              "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
              "<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n</tool_call>")

# (format, prompt opened the block, generated text, reasoning, content)
CASES = [
    (GLM, False, "<think>Let me think.</think>\nThe answer is 4.", "Let me think.", "The answer is 4."),
    (GLM, False, "\n<think>\n多想一下。\n</think>\n\n答案是 4。", "多想一下。", "答案是 4。"),
    (GLM, True, "Simple question.</think>2 + 2 = **4**", "Simple question.", "2 + 2 = **4**"),  # GLM-4.7
    (GLM, True, "<think>re-opened</think>ok", "re-opened", "ok"),  # a redundant opening tag is dropped
    (GLM, False, "No reasoning at all.\n", None, "No reasoning at all.\n"),  # kept exactly
    (GLM, False, "  <thin and more", None, "  <thin and more"),
    (GLM, True, "cut by max_tokens while still thinking", "cut by max_tokens while still thinking", ""),
    (GLM, True, "I will call it.<tool_call>get_time</tool_call>", "I will call it.", "<tool_call>get_time</tool_call>"),
    (GLM, False, "<think></think>\nempty block", None, "empty block"),
    (QWEN, False, "<think>\nOkay, 2+2.\n</think>\n\nIt is 4.", "Okay, 2+2.", "It is 4."),
    (QWEN, False, "<think>\n\n</think>\n\nNo thinking.", None, "No thinking."),
    (R1, False, "Hmm, 2+2 is 4.\n</think>\n\n**4**", "Hmm, 2+2 is 4.", "**4**"),  # the template opened it
    (R1, False, "<think>\nwrote the tag\n</think>\n4", "wrote the tag", "4"),
    (R1, False, "never closed", "never closed", ""),
    (GLM, True, "a < b and </thinking> is no marker</think>x", "a < b and </thinking> is no marker", "x"),
    (GLM, True, "\n先算一下：2+2=4。\n</think>\n答案是 4。", "先算一下：2+2=4。", "答案是 4。"),  # Z1 after `\n<think>`
    (GLM, True, "半个\ufffd</think>答", "半个", "答"),  # a budget forced </think> mid-character
    (GLM, True, "a\ufffd b\ufffd \n</think>", "a\ufffd b", ""),  # only the tail goes
]


@pytest.mark.parametrize("fmt,inside,text,reasoning,content", CASES)
def test_reasoning_and_content_of_published_layouts(fmt, inside, text, reasoning, content) -> None:
    result = parse_reasoning(text, fmt, inside)
    assert (result.reasoning, result.content) == (reasoning, content)


@pytest.mark.parametrize("fmt,inside,text,reasoning,content", CASES)
def test_streaming_cut_at_every_character_gives_the_same_split(fmt, inside, text, reasoning, content) -> None:
    for cut in range(len(text) + 1):
        splitter = ReasoningSplitter(fmt, inside)
        pieces = [splitter.push(text[:cut]), splitter.push(text[cut:]), splitter.finish()]
        assert "".join(r for r, _ in pieces) == (reasoning or "")
        assert "".join(c for _, c in pieces) == content
    splitter = ReasoningSplitter(fmt, inside)  # one character per delta
    pieces = [splitter.push(ch) for ch in text] + [splitter.finish()]
    assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == (reasoning or "", content)


def test_reasoning_streams_before_the_block_closes() -> None:
    splitter = ReasoningSplitter(GLM, starts_inside=False)
    assert splitter.push("<think>Step one") == ("Step one", "")
    assert splitter.push(" and two</thi") == (" and two", "")  # the partial marker is held
    assert splitter.push("nk>\nDone") == ("", "Done")


def test_detection_reads_only_templates_that_think() -> None:
    assert detect_reasoning_format("[gMASK]<sop>{% if add_generation_prompt %}<|assistant|><think>{% endif %}") == "glm45"
    assert detect_reasoning_format("<|im_start|>assistant\n<think>\n\n</think>\n\n") == "qwen3"
    assert detect_reasoning_format("<｜Assistant｜><think>\n") == "deepseek_r1"
    assert detect_reasoning_format("<|im_start|>assistant\n") is None  # no <think>: no parser
    assert detect_reasoning_format("<think> in some unknown family") is None
    assert detect_reasoning_format(None) is None


def test_settings_choices_are_the_formats() -> None:
    import typing

    from server.settings import Settings

    choices = typing.get_args(Settings.model_fields["reasoning_parser"].annotation)
    assert set(choices) == {"auto", "none", *REASONING_FORMATS}


def test_prompt_tail_tells_where_the_output_starts() -> None:
    assert prompt_opens_reasoning("<|user|>hi<|assistant|><think>", GLM)
    assert prompt_opens_reasoning("<|user|>\nhi\n<|assistant|>\n<think>", GLM)  # GLM-Z1-0414
    assert not prompt_opens_reasoning("<|user|>hi<|assistant|>", GLM)
    assert prompt_opens_reasoning("<｜Assistant｜>", R1)  # R1 output always starts inside
    assert prompt_closes_reasoning("<|assistant|>\n<think></think>", GLM)  # enable_thinking false


# ---- reasoning, then tool calls, in one stream ------------------------------------------------------
def _glm45_plan() -> ToolPlan:
    return ToolPlan("auto", parser_for("glm45", [WEATHER_TOOL, TIME_TOOL]))


def test_a_tool_call_after_think_is_a_call_not_reasoning() -> None:
    parsed = parse_choice(GLM45_CALL, ReasoningPlan(GLM, False), _glm45_plan())
    assert parsed.reasoning == "The user wants Paris weather.\nI should call get_weather."
    assert parsed.content is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.tool_calls] == [
        ("get_weather", '{"city": "Paris", "unit": "celsius"}')]


def test_a_tool_call_tag_ends_reasoning_that_was_never_closed() -> None:
    text = "I could write <tool_call> here</think>but no."
    parsed = parse_choice(text, ReasoningPlan(QWEN, True), ToolPlan())
    # qwen3/glm45: a <tool_call> ends reasoning (models skip </think> before calls); no tools: content
    assert parsed.reasoning == "I could write" and parsed.content == "<tool_call> here</think>but no."


def _fold(deltas: list[dict]) -> tuple[str, str, dict[int, list[str]], list[str]]:
    reasoning, content, args, order = "", "", {}, []
    for d in deltas:
        assert len(d) == 1 or set(d) == {"reasoning_content", "reasoning"}
        if "reasoning_content" in d:
            assert d["reasoning"] == d["reasoning_content"]
            reasoning += d["reasoning_content"]
            order.append("reasoning")
        if "content" in d:
            content += d["content"]
            order.append("content")
        for call in d.get("tool_calls", []):
            if "id" in call:
                args[call["index"]] = [call["function"]["name"]]
                order.append("header")
            else:
                args[call["index"]].append(call["function"]["arguments"])
                order.append("arguments")
    return reasoning, content, args, order


@pytest.mark.parametrize("text", [GLM45_CALL, "<think>ok</think>\nFirst I answer. " + GLM45_CALL[GLM45_CALL.index("<tool_call>"):]])
def test_streamed_deltas_at_every_cut_equal_the_parsed_choice(text: str) -> None:
    expected = parse_choice(text, ReasoningPlan(GLM, False), _glm45_plan())
    for cut in range(len(text) + 1):
        stream = ChoiceStream(ReasoningPlan(GLM, False), _glm45_plan())
        deltas = stream.push(text[:cut]) + stream.push(text[cut:]) + stream.finish()
        reasoning, content, args, order = _fold(deltas)
        assert reasoning == (expected.reasoning or "") and content == (expected.content or "")
        assert {i: (a[0], "".join(a[1:])) for i, a in args.items()} == {
            i: (c["function"]["name"], c["function"]["arguments"]) for i, c in enumerate(expected.tool_calls)}
        assert order == sorted(order, key=["reasoning", "content", "header", "arguments"].index)
        assert stream.has_tool_calls


# ---- logits processors on token ids -----------------------------------------------------------------
START, END, NL = 5, 6, 7
SPAN = ThinkSpan((START,), (END,), starts_inside=False, skip_ids=frozenset({NL}))


def test_think_span_locates_the_block() -> None:
    assert SPAN.locate([]) == ("undecided", 0)
    assert SPAN.locate([NL]) == ("undecided", 1)
    assert SPAN.locate([NL, START, 1, 2]) == ("open", 2)
    assert SPAN.locate([START, 1, END, 3]) == ("closed", 3)
    assert SPAN.locate([1, START]) == ("none", 0)
    inside = ThinkSpan((START,), (END,), starts_inside=True)
    assert inside.locate([1, 2]) == ("open", 0) and inside.locate([1, END]) == ("closed", 2)
    two = ThinkSpan((START,), (8, 9))
    assert two.locate([START, 1, 8]) == ("open", 1) and two.partial_end([START, 1, 8]) == 1


def test_budget_forces_the_end_marker_once_spent() -> None:
    budget = ThinkingBudgetProcessor(SPAN, budget=2)
    row = torch.randn(10)
    assert torch.equal(budget([START, 1], row.clone()), row)  # one reasoning token: free
    forced = budget([START, 1, 2], row.clone())
    assert forced.argmax() == END and torch.isinf(forced).sum() == 9
    assert torch.equal(budget([START, 1, 2, END], row.clone()), row)  # closed: free again
    two = ThinkingBudgetProcessor(ThinkSpan((START,), (8, 9), starts_inside=True), budget=1)
    assert two([1], row.clone()).argmax() == 8 and two([1, 8], row.clone()).argmax() == 9


def test_budget_lets_a_character_finish_before_closing() -> None:
    lead = 9  # stands for a token that leaves a UTF-8 character open

    budget = ThinkingBudgetProcessor(SPAN, budget=2, mid_character=lambda ids: ids[-1] == lead)
    row = torch.randn(10)
    assert torch.equal(budget([START, 1, lead], row.clone()), row)  # spent, but mid-character: one more
    assert budget([START, 1, 2], row.clone()).argmax() == END
    grace = ThinkingBudgetProcessor.MAX_GRACE_TOKENS
    assert budget([START, 1] + [lead] * (grace + 1), row.clone()).argmax() == END  # the grace is bounded


def test_gate_applies_the_grammar_after_the_block_only() -> None:
    seen: list[list[int]] = []

    def grammar(ids: list[int], row: torch.Tensor) -> torch.Tensor:
        seen.append(list(ids))
        row[:] = float("-inf")
        row[3] = 0.0  # the grammar allows token 3 only
        return row

    gate = ReasoningGate(SPAN, grammar)
    row = torch.randn(10)
    assert torch.equal(gate([START, 1], row.clone()), row)  # reasoning: untouched
    assert gate([START, 1, END], row.clone()).argmax() == 3 and seen[-1] == []  # grammar from after </think>
    first = gate([], row.clone())  # undecided: the grammar's token or <think>
    assert sorted(torch.isfinite(first).nonzero().flatten().tolist()) == [3, START]
    assert gate([3], row.clone()).argmax() == 3 and seen[-1] == [3]  # no block: grammar from the start

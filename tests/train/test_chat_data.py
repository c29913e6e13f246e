"""SFT data: both JSONL formats, assistant-only targets under two chat templates, bad lines by number."""
from __future__ import annotations

import json

import pytest

from model.train.chat_data import load_chat_jsonl
from model.train.data import IGNORE_INDEX, DataError

CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
                {"role": "assistant", "content": "6, of course."}]


def _write(path, lines: list) -> str:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return str(path)


def _template(model_dir: str):
    from model.chat_template import ChatTemplate
    from model.tokenizer import Tokenizer

    tok = Tokenizer(model_dir)
    return tok, ChatTemplate(tok)


def _load(path: str, model_dir: str, **kw):
    tok, template = _template(model_dir)
    eos = tok.hf.eos_token_id
    return tok, load_chat_jsonl(path, template, set(tok.eos_token_ids), eos, eos, kw.pop("max_len", 512), **kw)


def _target_spans(labels: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for t in labels:
        if t == IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            cur.append(t)
    return spans + ([cur] if cur else [])


def test_glm_template_targets_are_assistant_turns_and_their_stop_token(glm_tokenizer, tmp_path) -> None:
    path = _write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    tok, ds = _load(path, glm_tokenizer)
    spans = [tok.decode(s, skip_special_tokens=False) for s in _target_spans(ds.labels[0].tolist())]
    # GLM has no end-of-turn marker: the next role token, or eos at the end, closes the turn
    assert spans == ["\n4<|user|>", "\n6, of course.<|endoftext|>"]


def test_chatml_template_targets_include_im_end(tmp_path) -> None:
    from model.loader import resolve_model_dir

    path = _write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    tok, ds = _load(path, resolve_model_dir("default"))
    spans = [tok.decode(s, skip_special_tokens=False) for s in _target_spans(ds.labels[0].tolist())]
    assert spans == ["4<|im_end|>\n", "6, of course.<|im_end|>\n"]
    assert tok.decode(ds.input_ids[0].tolist(), skip_special_tokens=False).count("<|im_start|>") == len(CONVERSATION)


def test_chatglm_conversations_format_equals_openai_format(glm_tokenizer, tmp_path) -> None:
    chatglm = [{"role": m["role"], "content": m["content"]} for m in CONVERSATION]
    sharegpt = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                for m in CONVERSATION]
    path = _write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"conversations": chatglm},
                                            {"conversations": sharegpt}])
    _, ds = _load(path, glm_tokenizer)
    assert len(ds) == 3
    for i in (1, 2):
        assert ds.input_ids[i].tolist() == ds.input_ids[0].tolist()
        assert ds.labels[i].tolist() == ds.labels[0].tolist()


def test_observation_role_renders_as_glm_observation(glm_tokenizer, tmp_path) -> None:
    turns = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "get_weather\n{}"},
             {"role": "observation", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    tok, ds = _load(_write(tmp_path / "c.jsonl", [{"conversations": turns}]), glm_tokenizer)
    text = tok.decode(ds.input_ids[0].tolist(), skip_special_tokens=False)
    assert "<|observation|>\nsunny<|assistant|>\nIt is sunny." in text


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    {"role": "assistant", "content": "It is sunny in Paris."}]


@pytest.mark.parametrize("family", ["glm", "default"])
def test_tool_calls_train_in_the_format_the_server_prompts(family, glm_tokenizer, tmp_path) -> None:
    """An OpenAI tool-call conversation: the call turn is a target in the family's format (GLM-4's
    `name\n{json}`, Hermes' `<tool_call>`), and every prompt prefix is what the server would send."""
    from model.chat_template import ChatTemplate
    from model.loader import resolve_model_dir
    from model.tokenizer import Tokenizer
    from model.tool_template import ToolTemplate

    model_dir = glm_tokenizer if family == "glm" else resolve_model_dir("default")
    tok = Tokenizer(model_dir)
    bridge = ToolTemplate(ChatTemplate(tok))
    path = _write(tmp_path / "tools.jsonl", [{"messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL]}])
    ds = load_chat_jsonl(path, bridge, set(tok.eos_token_ids), tok.hf.eos_token_id, tok.hf.eos_token_id, 1024)
    ids, labels = ds.input_ids[0].tolist(), ds.labels[0].tolist()
    spans = [tok.decode(s, skip_special_tokens=False) for s in _target_spans(labels)]
    served_prompt = bridge.encode(TOOL_CONVERSATION[:1], [WEATHER_TOOL])  # what the server sends for turn 1
    assert ids[:len(served_prompt)] == served_prompt and labels[len(served_prompt) - 1] == IGNORE_INDEX
    if family == "glm":
        assert spans[0].startswith('get_weather\n{"city": "Paris"}') and "<|observation|>" in spans[0]
    else:
        assert spans[0].startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')
        assert spans[0].endswith("<|im_end|>\n")
    # GLM's assistant turn opens with "\n" after <|assistant|> (the model writes it), ChatML's after the header
    assert spans[1].lstrip("\n").startswith("It is sunny in Paris.") and "sunny, 21 C" not in "".join(spans)


def test_bad_lines_are_reported_with_line_numbers(glm_tokenizer, tmp_path) -> None:
    lines = [{"messages": CONVERSATION}, "{not json", {"messages": [{"role": "user", "content": "hi"}]},
             {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
             "", {"conversations": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
             [1, 2]]
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        _load(path, glm_tokenizer)
    assert [line for line, _ in err.value.problems] == [2, 3, 4, 6, 7]
    message = str(err.value)
    assert f"{path}:2: invalid JSON" in message and "no assistant turn" in message and "'wizard'" in message


def test_skip_bad_lines_keeps_the_good_ones(glm_tokenizer, tmp_path) -> None:
    path = _write(tmp_path / "bad.jsonl", [{"messages": CONVERSATION}, "{not json", {"messages": CONVERSATION}])
    _, ds = _load(path, glm_tokenizer, skip_bad_lines=True)
    assert len(ds) == 2


def test_conversation_without_assistant_tokens_inside_max_len_is_a_problem(glm_tokenizer, tmp_path) -> None:
    long_user = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    path = _write(tmp_path / "long.jsonl", [{"messages": CONVERSATION}, {"messages": long_user}])
    with pytest.raises(DataError, match=r"long.jsonl:2: no assistant token within max_len=64"):
        _load(path, glm_tokenizer, max_len=64)

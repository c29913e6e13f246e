"""`glmserve chat` driven through a pseudo-terminal (pexpect) against the live server."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from tests.clients.metrics_util import scrape, total, wait_for
from tests.helpers.live_server import SubprocessServer

STATS = re.compile(r"\[(ttft [\d.]+ s|no tokens) · ~?(\d+) tokens(?: · [\d.]+ tok/s)?(?: · stopped)?\]")
PROMPT = ">>> "


def spawn_chat(url: str, *args: str) -> pexpect.spawn:
    glmserve = str(Path(sys.executable).with_name("glmserve"))
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    # SIGINT as an interactive shell leaves it: a suite started as a background job of a non-interactive
    # shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    child = pexpect.spawn(glmserve, ["chat", "--url", url, *args], env=env, encoding="utf-8",
                          timeout=120, dimensions=(40, 200),  # generous: CI may run with both cores busy
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect("glmserve chat · model default")
    child.expect_exact(PROMPT)
    return child


def transcript(child: pexpect.spawn) -> str:
    return child.before.replace("\r\n", "\n")


@pytest.fixture(scope="module")
def chat(live_server: SubprocessServer):
    child = spawn_chat(live_server.base_url, "--max-tokens", "4", "--temperature", "0")
    yield child
    child.close(force=True)


def save(child: pexpect.spawn, path: Path) -> dict:
    child.sendline(f"/save {path}")
    child.expect(r"saved (\d+) messages")
    child.expect_exact(PROMPT)
    return json.loads(path.read_text(encoding="utf-8"))


def test_chinese_question_streams_answer_with_ttft_and_speed(chat: pexpect.spawn, tmp_path: Path) -> None:
    question = "你好！请用一句话介绍长城。"
    chat.sendline(question)
    chat.expect(STATS)
    assert chat.match.group(1).startswith("ttft")
    assert int(chat.match.group(2)) > 0
    shown = transcript(chat)
    chat.expect_exact(PROMPT)
    saved = save(chat, tmp_path / "conv.json")
    assert saved["messages"][0] == {"role": "user", "content": question}  # typed Chinese arrives intact
    answer = saved["messages"][1]["content"]
    assert saved["messages"][1]["role"] == "assistant" and answer.strip()
    assert answer in shown  # what was printed is exactly what was streamed


def test_multiline_block_and_continuation_lines(chat: pexpect.spawn, tmp_path: Path) -> None:
    chat.sendline("/reset")
    chat.expect("conversation reset")
    chat.sendline('"""')
    for line in ("first line", "第二行", '"""'):
        chat.expect_exact("... ")
        chat.sendline(line)
    chat.expect(STATS)
    chat.sendline("one \\")
    chat.expect_exact("... ")
    chat.sendline("two")
    chat.expect(STATS)
    chat.expect_exact(PROMPT)
    users = [m["content"] for m in save(chat, tmp_path / "ml.json")["messages"] if m["role"] == "user"]
    assert users == ["first line\n第二行", "one \ntwo"]


def test_system_prompt_and_reset(chat: pexpect.spawn, tmp_path: Path) -> None:
    chat.sendline("/system 你是一个简洁的助手。")
    chat.expect("system prompt set")
    chat.sendline("/system")
    chat.expect("system: 你是一个简洁的助手。")
    chat.expect_exact(PROMPT)
    messages = save(chat, tmp_path / "sys.json")["messages"]
    assert messages[0] == {"role": "system", "content": "你是一个简洁的助手。"}
    assert len(messages) > 1
    chat.sendline("/reset")
    chat.expect("conversation reset")
    chat.expect_exact(PROMPT)
    assert save(chat, tmp_path / "reset.json")["messages"] == [messages[0]]


def test_ctrl_c_stops_the_answer_and_the_server_aborts_it(live_server: SubprocessServer, tmp_path: Path) -> None:
    url = live_server.base_url
    child = spawn_chat(url, "--max-tokens", "2000")
    try:
        aborted_before = total(scrape(url), "glmserve:request_success_total", finished_reason="abort")
        question = "Write a very long story about a dragon who learns to cook."
        child.sendline(question)
        child.expect_exact(question)  # the terminal's echo of the typed line
        # Ctrl-C only once the server runs the request and the answer streams: wait on that state, not on
        # time (a 2000-token answer runs for minutes, so it is still streaming when the interrupt lands)
        assert wait_for(lambda: total(scrape(url), "glmserve:num_requests_running") >= 1, timeout=120)
        child.expect(r"\S", timeout=120)  # the answer's first visible text
        child.sendintr()
        child.expect(STATS, timeout=120)
        assert "stopped" in child.match.group(0) and child.match.group(1).startswith("ttft")
        assert int(child.match.group(2)) < 2000
        child.expect_exact(PROMPT)
        # closing the stream made the server abort the request, long before 2000 tokens
        assert wait_for(lambda: total(scrape(url), "glmserve:request_success_total", finished_reason="abort")
                        >= aborted_before + 1, timeout=60)
        assert wait_for(lambda: total(scrape(url), "glmserve:num_requests_running") == 0, timeout=60)
        # the chat goes on: a next question is answered, the stopped answer stays in the history
        child.sendline("/save " + str(tmp_path / "after.json"))
        child.expect("saved 2 messages")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_unknown_command_and_ctrl_d(chat: pexpect.spawn) -> None:
    chat.sendline("/nope")
    chat.expect("unknown command /nope")
    chat.expect_exact(PROMPT)
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0

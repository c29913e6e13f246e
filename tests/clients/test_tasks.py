"""`glmserve summarize` and `glmserve translate` against the live server's task endpoints."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.live_server import SubprocessServer

GLMSERVE = str(Path(sys.executable).with_name("glmserve"))
TEXT = ("长城是中国古代的军事防御工程，修建历史可上溯到西周时期。"
        "The Great Wall stretches across northern China and is one of the most famous structures in the world.")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GLMSERVE, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          encoding="utf-8")


def test_summarize_a_file_streams_to_stdout(live_server: SubprocessServer, tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    result = run("summarize", str(path), "--max-length", "5", "--url", live_server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_translate_reads_stdin(live_server: SubprocessServer) -> None:
    result = run("translate", "-", "--to", "en", "--url", live_server.base_url, stdin="你好。")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_no_stream_returns_the_whole_result(live_server: SubprocessServer, tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    result = run("translate", str(path), "--to", "zh", "--no-stream", "--url", live_server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_server_errors_are_reported_with_exit_code_1(live_server: SubprocessServer) -> None:
    result = run("summarize", "-", "--url", live_server.base_url, "--model", "no-such-model", stdin="text")
    assert result.returncode == 1
    assert "glmserve summarize:" in result.stderr and "404" in result.stderr


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    result = run("summarize", str(tmp_path / "absent.txt"))
    assert result.returncode == 1 and "absent.txt" in result.stderr

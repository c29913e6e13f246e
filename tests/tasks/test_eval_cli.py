"""`glmserve eval` (clients/eval.py) end to end against the live tiny server: report and per-item JSONL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.eval import main
from tests.tasks.conftest import KEY

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"


def run_eval(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    code = main([*args, "--api-key", KEY, "--no-progress"])
    return code, json.loads(capsys.readouterr().out)


def test_summarize_eval_writes_scores_and_items(tiny_task_server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "items.jsonl"
    code, report = run_eval(capsys, "summarize", "--data", str(DATA / "summarize.jsonl"), "--url",
                            tiny_task_server.base_url, "--limit", "3", "--out", str(out))
    assert code == 0 and report["items"] == 3 and report["errors"] == 0
    assert set(report["scores"]) == {"all", "en"}
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert [i["id"] for i in items] == ["en-library", "en-bakery", "en-battery"]
    for item in items:
        assert 0.0 <= item["rougeL"] <= 1.0 and item["length"] <= item["max_length"] == 40
        assert item["usage"]["prompt_tokens"] > 0


def test_translate_eval_reports_bleu_and_chrf_per_pair(tiny_task_server, tmp_path: Path, capsys) -> None:
    code, report = run_eval(capsys, "translate", "--data", str(DATA / "translate.jsonl"), "--url",
                            tiny_task_server.base_url, "--limit", "2")
    assert code == 0 and report["errors"] == 0
    assert set(report["scores"]) == {"zh-en", "en-zh", "glossary"}
    assert all(0.0 <= report["scores"][p][m] <= 100.0 for p in ("zh-en", "en-zh") for m in ("bleu", "chrf"))


def test_missing_data_file_is_a_usage_error(capsys) -> None:
    assert main(["summarize", "--data", "/nonexistent/eval.jsonl", "--no-progress"]) == 2
    assert "nonexistent" in capsys.readouterr().err

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


PERPLEXITY_TEXT = ("The server streams tokens over SSE. It batches requests continuously over a paged KV cache.\n\n"
                   "GLM models answer in Chinese and English: 你好，世界！今天天气很好。\n"
                   "A second line of the same paragraph, and some more words to fill the window.\n\n\n"
                   "Another document, short.")


def test_windows_cover_the_text_at_boundaries() -> None:
    from clients.eval_perplexity import windows

    pieces = windows(PERPLEXITY_TEXT, 60)
    assert "".join(pieces) == PERPLEXITY_TEXT and all(len(p) <= 60 for p in pieces)
    assert all(p.endswith((" ", "\n")) for p in pieces[:-1])  # never inside a word
    assert windows("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # no boundary: hard cuts


def test_perplexity_eval_equals_transformers(tiny_task_server, tiny_llama_dir: str, tmp_path: Path, capsys) -> None:
    """Every window scored over HTTP (echo + logprobs, max_tokens 0) gives the NLL transformers computes."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from clients.eval_perplexity import load_documents, windows

    data = tmp_path / "corpus.txt"
    data.write_text(PERPLEXITY_TEXT, encoding="utf-8")
    code, report = run_eval(capsys, "perplexity", "--data", str(data), "--url", tiny_task_server.base_url,
                            "--window-chars", "80")
    assert code == 0 and report["errors"] == 0 and report["documents"] == 2
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = tiny_task_server.engine.tokenizer
    nll, tokens, pieces = 0.0, 0, [w for d in load_documents(str(data), None) for w in windows(d, 80)]
    with torch.no_grad():
        for window in pieces:
            ids = tokenizer.encode(window)
            logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1)
            nll -= logprobs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
            tokens += len(ids) - 1
    assert report["windows"] == len(pieces) and report["tokens_scored"] == tokens
    assert report["nll_per_token"] == pytest.approx(nll / tokens, abs=1e-3)
    assert report["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-3)
    assert 0 < report["bits_per_byte"] < report["nll_per_token"] / math.log(2)  # tokens hold > 1 byte each

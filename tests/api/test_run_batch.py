"""`glmserve run-batch` (python -m server.batch) on a tiny random checkpoint: one result line per input
line, route errors and unrunnable lines reported per line, translate bodies too, and a rerun that skips
what is done (a torn last line included)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.live_server import REPO_ROOT, TEST_ENV

CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0}


def line(custom_id: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def run(model: str, inp: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "server.batch", "-i", str(inp), "-o", str(out), "--model", model,
                           "--max-num-seqs", "4", "--kv-cache-memory", str(32 << 20), "--no-progress"],
                          cwd=REPO_ROOT, env={**TEST_ENV, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stderr.strip().splitlines()[-1])


def results(out: Path) -> dict:
    return {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines()) if r["custom_id"]}


def test_every_line_gets_a_result_and_a_rerun_resumes(tiny_llama_dir: str, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [line(f"chat-{i}", "/v1/chat/completions", CHAT) for i in range(6)]
    inp.write_text("\n".join([
        *good,
        line("tr-1", "/v1/translate", {"text": "Good morning.", "target_lang": "fr", "max_tokens": 4}),
        line("emb-1", "/v1/embeddings", {"input": ["a b", "c"]}),
        line("bad-body", "/v1/chat/completions", {"messages": []}),
        json.dumps({"custom_id": "bad-url", "method": "POST", "url": "/v1/files", "body": {}}),
        "not json",
    ]) + "\n")
    summary = run(tiny_llama_dir, inp, out)
    got = results(out)
    assert summary["ok"] == 8 and summary["failed"] == 3 and len(out.read_text().splitlines()) == 11
    assert all(got[f"chat-{i}"]["response"]["status_code"] == 200 for i in range(6))
    assert got["chat-0"]["response"]["body"]["object"] == "chat.completion"
    assert got["tr-1"]["response"]["body"]["object"] == "translation"
    assert len(got["emb-1"]["response"]["body"]["data"]) == 2
    assert got["bad-body"]["response"]["status_code"] == 400 and "error" in got["bad-body"]["response"]["body"]
    assert got["bad-url"]["response"] is None and got["bad-url"]["error"]["code"] == "unsupported_url"

    # a killed run: the last two results lost, the one before torn mid-line (cut off on the rerun)
    kept = out.read_text().splitlines()
    lost = {json.loads(r)["custom_id"] for r in kept[-3:]} - {None}  # ids to run again
    out.write_text("\n".join(kept[:-3]) + "\n" + kept[-3][: len(kept[-3]) // 2])
    again = run(tiny_llama_dir, inp, out)
    kept_ids = {json.loads(r)["custom_id"] for r in kept[:-3]} - {None}
    assert again["skipped"] == len(kept_ids)
    assert again["ok"] + again["failed"] == len(lost) + 1  # the lost lines, and the id-less line again
    assert set(results(out)) == set(got)

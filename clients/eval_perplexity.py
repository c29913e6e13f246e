"""`glmserve eval perplexity`: how well a served model predicts a text, over HTTP.

    glmserve eval perplexity --data corpus.txt [--url URL] [--window-chars 2000] [--concurrency 4]

Documents are a .txt file's parts separated by two blank lines (the whole file when it has none) or
a .jsonl file's "text" fields. Each is cut into windows of at most --window-chars characters at
paragraph, line or space boundaries, and every window is scored with one completions request
(`echo` + `logprobs`, `max_tokens: 0`): the logprob of each of its tokens but the first. Reported:
tokens scored, mean negative log-likelihood per token, perplexity, and bits per byte of the scored
text (comparable across tokenizers).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from tqdm import tqdm

from clients.api import APIError, api_base, error_from_body, headers


def load_documents(path: str, limit: int | None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            docs = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    text = json.loads(line).get("text")
                    if not isinstance(text, str):
                        raise SystemExit(f"{path}:{n}: every line needs a string 'text'")
                    docs.append(text)
        else:
            docs = [d for d in f.read().split("\n\n\n") if d.strip()]
    return docs[:limit] if limit else docs


def windows(text: str, max_chars: int) -> list[str]:
    """Consecutive pieces of at most max_chars characters that together are the text, cut at the last
    paragraph break, else line break, else space inside the limit (a hard cut only when none)."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + max_chars)
        if end < len(text):
            for sep in ("\n\n", "\n", " "):
                cut = text.rfind(sep, start + 1, end)
                if cut > start:
                    end = cut + len(sep)
                    break
        pieces.append(text[start:end])
        start = end
    return [p for p in pieces if p.strip()]


def score_window(client: httpx.Client, url: str, window: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": window, "echo": True, "logprobs": 0, "max_tokens": 0, "temperature": 0}
    if args.model:
        body["model"] = args.model
    try:
        resp = client.post(url, json=body, headers=headers(args.api_key))
        if resp.status_code != 200:
            raise error_from_body(resp.status_code, resp.content)
        logprobs = resp.json()["choices"][0]["logprobs"]
    except (httpx.HTTPError, APIError, KeyError, ValueError) as e:
        return {"error": str(e)}
    scored = [lp for lp in logprobs["token_logprobs"][1:] if lp is not None]
    offsets = logprobs["text_offset"]
    scored_text = window[offsets[1]:] if len(offsets) > 1 else ""  # what the scored tokens spell
    return {"tokens": len(scored), "nll": -sum(scored), "bytes": len(scored_text.encode("utf-8"))}


def evaluate_perplexity(args: argparse.Namespace) -> dict[str, Any]:
    docs = load_documents(args.data, args.limit)
    pieces = [w for doc in docs for w in windows(doc, args.window_chars)]
    url = f"{api_base(args.url)}/completions"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=args.timeout)) as client, \
            ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(score_window, client, url, w, args) for w in pieces]
        results = [f.result() for f in tqdm(futures, desc="eval perplexity", unit="window", file=sys.stderr,
                                            disable=args.no_progress)]
    ok = [r for r in results if "error" not in r]
    tokens, nll, nbytes = sum(r["tokens"] for r in ok), sum(r["nll"] for r in ok), sum(r["bytes"] for r in ok)
    report: dict[str, Any] = {"task": "perplexity", "data": args.data, "url": args.url, "model": args.model,
                              "documents": len(docs), "windows": len(pieces), "errors": len(results) - len(ok),
                              "tokens_scored": tokens}
    if tokens:
        report.update(nll_per_token=round(nll / tokens, 4), perplexity=round(math.exp(nll / tokens), 3),
                      bits_per_byte=round(nll / math.log(2) / max(1, nbytes), 4))
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        report["first_error"] = errors[0]
    return report

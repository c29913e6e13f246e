"""`glmserve eval`: summarization and translation quality of any served model, over HTTP, and
perplexity of a text (clients/eval_perplexity.py).

    glmserve eval summarize --data data/eval/summarize.jsonl [--url http://127.0.0.1:8000] [--out items.jsonl]
    glmserve eval translate --data data/eval/translate.jsonl [--model NAME] [--concurrency 4] [--limit 10]
    glmserve eval perplexity --data corpus.txt [--window-chars 2000]

Each JSONL line is one item. summarize: {"id", "text", "reference", "language"?, "max_length"?,
"length_unit"?, "style"?}. translate: {"id", "text", "reference", "target_lang", "source_lang"?,
"glossary"?}. Summaries are scored with ROUGE-L F1 (character-level for Chinese) and length
compliance (share of items within 20% of max_length, never above); translations with corpus BLEU and
chrF (sacrebleu) per target language and glossary-term compliance. The report is JSON on stdout; --out
writes one JSON line per item (prediction, scores, latency, usage, error).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from tqdm import tqdm

from clients.api import APIError, api_base, default_api_key, default_url, error_from_body, headers
from clients.eval_metrics import count_length, rouge_l, sentence_scores, translation_scores
from clients.eval_perplexity import evaluate_perplexity

TASKS = {"summarize": "summary", "translate": "translation"}
LENGTH_TOLERANCE = 0.2


def load_items(path: str, limit: int | None) -> list[dict[str, Any]]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                item = json.loads(line)
                for key in ("text", "reference"):
                    if not isinstance(item.get(key), str):
                        raise SystemExit(f"{path}:{n}: every item needs a string {key!r}")
                item.setdefault("id", str(n))
                items.append(item)
    return items[:limit] if limit else items


def request_body(task: str, item: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"text": item["text"], "temperature": args.temperature}
    if args.model:
        body["model"] = args.model
    keys = ("max_length", "length_unit", "style", "language") if task == "summarize" else \
        ("source_lang", "target_lang", "glossary")
    body.update({k: item[k] for k in keys if item.get(k) is not None})
    if task == "translate" and "target_lang" not in body:
        raise SystemExit(f"item {item['id']}: translate items need target_lang")
    return body


def run_item(client: httpx.Client, url: str, task: str, item: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {"id": item["id"], "reference": item["reference"]}
    try:
        response = client.post(url, json=request_body(task, item, args), headers=headers(args.api_key))
        if response.status_code >= 400:
            raise error_from_body(response.status_code, response.content)
        data = response.json()
        record.update(prediction=data[TASKS[task]], usage=data.get("usage"), num_chunks=data.get("num_chunks"))
        if task == "translate":
            record.update(source_lang=data.get("source_lang"), target_lang=data.get("target_lang"),
                          glossary_unhonored=data.get("glossary_unhonored", []))
    except (APIError, httpx.HTTPError, KeyError, ValueError) as e:
        record.update(prediction="", error=str(e))
    record["latency_s"] = round(time.perf_counter() - start, 3)
    return record


def score_summary(item: dict[str, Any], record: dict[str, Any]) -> None:
    record["rougeL"] = round(rouge_l(record["prediction"], item["reference"])["f"], 4)
    record["language"] = item.get("language")
    if item.get("max_length"):
        unit = item.get("length_unit") or ("chars" if item.get("language") in ("zh", "ja", "ko") else "words")
        length = count_length(record["prediction"], unit)
        record.update(length=length, max_length=item["max_length"], length_unit=unit,
                      length_ratio=round(length / item["max_length"], 3))


def summarize_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups["all"].append(r)
        groups[r.get("language") or "unknown"].append(r)
    report = {}
    for name, rs in groups.items():
        sized = [r for r in rs if "length_ratio" in r and not r.get("error")]
        within = [r for r in sized if 1 - LENGTH_TOLERANCE <= r["length_ratio"] <= 1.0]
        report[name] = {"items": len(rs), "rougeL": round(100 * sum(r["rougeL"] for r in rs) / len(rs), 2),
                        "length_within_20pct": round(len(within) / len(sized), 3) if sized else None,
                        "mean_length_ratio": round(sum(r["length_ratio"] for r in sized) / len(sized), 3)
                        if sized else None}
    return report


def translate_report(items: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    by_pair: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for item, r in zip(items, records):
        by_pair[f"{item.get('source_lang', 'auto')}-{item['target_lang']}"].append((item, r))
        r.update(sentence_scores(r["prediction"], item["reference"], item["target_lang"]))
    report = {}
    for pair, rows in sorted(by_pair.items()):
        target = rows[0][0]["target_lang"]
        scores = translation_scores([r["prediction"] for _, r in rows], [i["reference"] for i, _ in rows], target)
        report[pair] = {"items": len(rows), **scores}
    terms = sum(len(i.get("glossary") or {}) for i in items)
    missed = sum(len(r.get("glossary_unhonored") or []) for r in records)
    report["glossary"] = {"terms": terms, "unhonored": missed}
    return report


def evaluate(task: str, args: argparse.Namespace) -> dict[str, Any]:
    items = load_items(args.data, args.limit)
    url = f"{api_base(args.url)}/{task}"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=args.timeout)) as client, \
            ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(run_item, client, url, task, item, args) for item in items]
        records = []
        for future in tqdm(futures, desc=f"eval {task}", unit="item", file=sys.stderr, disable=args.no_progress):
            records.append(future.result())
    if task == "summarize":
        for item, record in zip(items, records):
            score_summary(item, record)
        report = summarize_report(records)
    else:
        report = translate_report(items, records)
    errors = sum(1 for r in records if r.get("error"))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"task": task, "data": args.data, "url": args.url, "model": args.model, "items": len(items),
            "errors": errors, "mean_latency_s": round(sum(r["latency_s"] for r in records) / max(1, len(records)), 2),
            "scores": report}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glmserve eval", description="Score a served model on an eval set.")
    p.add_argument("task", choices=sorted(TASKS) + ["perplexity"])
    p.add_argument("--data", required=True, help="JSONL eval set, e.g. data/eval/summarize.jsonl; for perplexity "
                                                 "a .txt (documents split by two blank lines) or .jsonl with 'text'")
    p.add_argument("--url", default=default_url(), help="server base URL (env GLMSERVE_URL)")
    p.add_argument("--api-key", default=default_api_key(), help="bearer key (env GLMSERVE_API_KEY)")
    p.add_argument("--model", default=None, help="model name to send (default: the served one)")
    p.add_argument("--out", default=None, help="write one JSON line per item here")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (the server batches them)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one answer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--window-chars", type=int, default=2000,
                   help="perplexity: characters per scored window (each must fit the model's context)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_perplexity(args) if args.task == "perplexity" else evaluate(args.task, args)
    except (OSError, json.JSONDecodeError) as e:
        print(f"glmserve eval: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, ensure_ascii=False, indent=2))
    total = report["windows"] if args.task == "perplexity" else report["items"]
    return 1 if report["errors"] == total else 0


if __name__ == "__main__":
    sys.exit(main())

"""`glmserve summarize` and `glmserve translate`: send a file to the task endpoints, stream the result.

    glmserve summarize report.txt [--max-length 120] [--length-unit words|chars] [--style bullets] [--language en]
    glmserve translate notes.zh.txt --to en [--from zh] [--glossary terms.json]
    cat notes.txt | glmserve translate - --to zh

FILE `-` reads stdin. The result streams to stdout as it is generated (`--no-stream` waits for it whole).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import httpx

from clients.api import APIError, api_base, check, default_api_key, default_url, error_from_body, headers, iter_sse

# which endpoint, which field of the final JSON holds the text, which chunk object carries deltas
ENDPOINTS = {
    "summarize": ("summarize", "summary", "summary.chunk"),
    "translate": ("translate", "translation", "translation.chunk"),
}


def read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_body(args: argparse.Namespace, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text, "stream": not args.no_stream}
    if args.model:
        body["model"] = args.model
    if args.command == "summarize":
        if args.max_length is not None:
            body["max_length"] = args.max_length
        for name in ("length_unit", "style", "language"):
            if getattr(args, name):
                body[name] = getattr(args, name)
    else:
        body["target_lang"] = args.to
        if args.source:
            body["source_lang"] = args.source
        if args.glossary:
            with open(args.glossary, encoding="utf-8") as f:
                body["glossary"] = json.load(f)  # {"source term": "target term", ...}
    return body


def stream_task(client: httpx.Client, url: str, body: dict[str, Any], api_key: str | None,
                chunk_object: str, out: TextIO) -> str:
    """Writes each delta as it arrives; returns the whole text."""
    pieces: list[str] = []
    with client.stream("POST", url, json=body, headers=headers(api_key)) as response:
        check(response)
        for event in iter_sse(response):
            if event.get("object") not in (None, chunk_object):
                continue  # a final summary/usage event, not text
            delta = event.get("delta")
            text = delta.get("content", "") if isinstance(delta, dict) else (delta or "")
            if text:
                pieces.append(text)
                out.write(text)
                out.flush()
    return "".join(pieces)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    path, result_field, chunk_object = ENDPOINTS[args.command]
    body = build_body(args, read_input(args.file))
    url = f"{api_base(args.url)}/{path}"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        if body["stream"]:
            text = stream_task(client, url, body, args.api_key, chunk_object, out)
        else:
            response = client.post(url, json=body, headers=headers(args.api_key))
            if response.status_code >= 400:
                raise error_from_body(response.status_code, response.content)
            text = response.json()[result_field]
            out.write(text)
    if not text.endswith("\n"):
        out.write("\n")
    return 0


def build_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"glmserve {command}")
    p.add_argument("file", help="input text file, or - for stdin")
    p.add_argument("--url", default=default_url(), help="server base URL (env GLMSERVE_URL)")
    p.add_argument("--api-key", default=default_api_key(), help="bearer key (env GLMSERVE_API_KEY)")
    p.add_argument("--model", default=None)
    p.add_argument("--no-stream", action="store_true", help="wait for the whole result")
    if command == "summarize":
        p.add_argument("--max-length", type=int, default=None, help="longest summary, in --length-unit")
        p.add_argument("--length-unit", default=None, choices=("words", "chars"),
                       help="unit of --max-length (chars suits Chinese)")
        p.add_argument("--style", default=None, choices=("paragraph", "bullets", "headline"))
        p.add_argument("--language", default=None, help="output language (default: the input's)")
    else:
        p.add_argument("--to", required=True, help="target language, e.g. en, zh")
        p.add_argument("--from", dest="source", default=None, help="source language (default: detected)")
        p.add_argument("--glossary", default=None, help="JSON file mapping source terms to target terms")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENDPOINTS:
        print("usage: glmserve summarize|translate FILE ...", file=sys.stderr)
        return 2
    command = argv[0]
    args = build_parser(command).parse_args(argv[1:])
    args.command = command
    try:
        return run(args)
    except (APIError, httpx.HTTPError, OSError) as exc:
        print(f"\nglmserve {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`glmserve run-batch`: an OpenAI batch file through the server's own routes and engine, offline.

    glmserve run-batch -i requests.jsonl -o results.jsonl [--concurrency 64] [--model default] [serve flags]
    python -m server.batch -i translate_jobs.jsonl -o translated.jsonl --max-num-seqs 16

Each input line is {"custom_id", "method": "POST", "url", "body"} with url one of /v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/translate, /v1/summarize; each
result line is {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}. A rerun
with the same -o skips the custom_ids already there. Every `glmserve serve` flag applies (the model,
engine sizes, dtype ...); the default --concurrency is twice --max-num-seqs, so the engine always has
the next request waiting when one finishes.
"""
from __future__ import annotations

import asyncio
import json
import sys


def build_parser():
    from server.__main__ import build_parser as serve_parser

    p = serve_parser()
    p.prog = "glmserve run-batch"
    p.description = "Run an OpenAI batch file (JSONL) through the model offline; serve flags apply."
    p.add_argument("-i", "--input", dest="input", required=True, help="batch file (JSONL) to run")
    p.add_argument("-o", "--output", dest="output", required=True,
                   help="results (JSONL); appended to, and ids already there are skipped")
    p.add_argument("--concurrency", dest="concurrency", type=int, default=None,
                   help="requests in flight (default: 2 x --max-num-seqs)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", default=False, help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from server.batch.runner import run_batch
    from server.logs import configure_logging
    from server.settings import Settings

    args = vars(build_parser().parse_args(argv))
    input_path, output_path = args.pop("input"), args.pop("output")
    concurrency, no_progress = args.pop("concurrency"), args.pop("no_progress")
    args.setdefault("self_test", "off")
    args.setdefault("log_level", "warning")  # one log line per request would bury the progress bar
    try:
        settings = Settings(**args)
    except ValidationError as e:
        print(f"glmserve run-batch: invalid settings:\n{e}", file=sys.stderr)
        return 2
    concurrency = concurrency or 2 * settings.max_num_seqs
    # every in-flight request may be waiting for the engine at once: the queue must admit them all
    settings = settings.model_copy(update={"max_queue": max(settings.max_queue, concurrency)})
    configure_logging(settings.log_level)
    from server.__main__ import build_app

    keys = settings.all_api_keys()
    summary = asyncio.run(run_batch(build_app(settings), input_path, output_path, concurrency,
                                    api_key=keys[0] if keys else None, progress=not no_progress))
    print(json.dumps({"ok": summary.num_ok, "failed": summary.num_failed, "skipped": summary.num_skipped,
                      "statuses": summary.statuses, "seconds": round(summary.seconds, 2),
                      "completion_tokens": summary.completion_tokens,
                      "output_tokens_per_second": round(summary.output_tokens_per_second, 1)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

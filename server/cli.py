"""`glmserve` console script: dispatches to each area's own entry point.

    glmserve serve [--model default] [--port 8000] ...   the HTTP server (server/__main__.py)
    glmserve info [MODEL]                                 load a model, print its config and load time
    glmserve run-batch -i requests.jsonl -o results.jsonl  an OpenAI batch file, offline (server/batch)
    glmserve train tokenizer|pretrain|sft ...             training (model/train/__main__.py)
    glmserve chat | bench | summarize | translate ...     HTTP clients (clients/)
    glmserve eval summarize|translate|perplexity --data FILE   quality evaluation over HTTP (clients/eval.py)
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": ("server.__main__", "serve the model over HTTP"),
    "info": ("server.info", "print a model's config and load time"),
    "run-batch": ("server.batch.__main__", "run an OpenAI batch file (JSONL) through the model offline"),
    "train": ("model.train.__main__", "train a tokenizer, pretrain or fine-tune"),
    "chat": ("clients.chat", "streaming terminal chat"),
    "bench": ("clients.bench", "load generator for any OpenAI-compatible server"),
    "summarize": ("clients.tasks", "summarize a file through /v1/summarize"),
    "translate": ("clients.tasks", "translate a file through /v1/translate"),
    "eval": ("clients.eval", "evaluate summarization or translation quality, or perplexity"),
}


def usage() -> str:
    lines = ["usage: glmserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"glmserve: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # summarize/translate share a module whose main takes the command name first
    if command in ("summarize", "translate"):
        rest = [command, *rest]
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

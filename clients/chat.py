"""`glmserve chat`: a streaming chat in the terminal against any OpenAI-compatible server.

    glmserve chat --url http://127.0.0.1:8000 [--model NAME] [--system "You are terse."] [--api-key KEY]

Type a message and press Enter. A line ending in `\\` continues on the next line; a line of `\"\"\"`
opens a block that ends at the next `\"\"\"` line. Commands: /reset, /system [TEXT], /save FILE, /help,
/exit. Ctrl-C while an answer streams stops it (the HTTP stream is closed, so the server aborts the
request) and returns to the prompt; Ctrl-C at the prompt clears the line; Ctrl-D quits.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from clients.api import (APIError, api_base, chat_delta_text, check, default_api_key, default_url,
                         first_model, headers, iter_sse)

try:  # line editing and history at the prompt where the platform has it
    import readline  # noqa: F401
except ImportError:  # pragma: no cover - Windows
    pass

HELP = """commands:
  /reset          forget the conversation (keeps the system prompt)
  /system [TEXT]  set the system prompt; without TEXT, show it
  /save FILE      write the conversation as JSON
  /help           this text
  /exit           quit (or Ctrl-D)
input: end a line with \\ to continue it; a line of \"\"\" opens and closes a multi-line block.
Ctrl-C stops an answer while it streams."""


@dataclass
class ReplyStats:
    """Timing of one answer: TTFT from request to first text, decode speed after it."""
    ttft_s: float | None = None
    num_tokens: int = 0
    tokens_exact: bool = False  # True when the server reported usage; else chunks were counted
    decode_s: float = 0.0
    stopped: bool = False

    def line(self) -> str:
        parts = [f"ttft {self.ttft_s:.3f} s" if self.ttft_s is not None else "no tokens"]
        approx = "" if self.tokens_exact else "~"
        parts.append(f"{approx}{self.num_tokens} tokens")
        if self.num_tokens > 1 and self.decode_s > 0:
            parts.append(f"{(self.num_tokens - 1) / self.decode_s:.1f} tok/s")
        if self.stopped:
            parts.append("stopped")
        return "[" + " · ".join(parts) + "]"


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns


class ChatSession:
    """One terminal session: owns the HTTP client, the conversation and the output stream."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.base = api_base(args.url)
        self.out = out
        self.color = out.isatty()
        self.client = self._new_client()
        self.model: str = args.model or first_model(self.client, self.base, args.api_key)
        self.conversation = Conversation(system=args.system)

    def _new_client(self) -> httpx.Client:
        # no read timeout: a long prompt on a busy CPU server may take a while to its first token
        return httpx.Client(timeout=httpx.Timeout(10.0, read=None))

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.color else text

    def ask(self, user_text: str) -> ReplyStats:
        """Streams one answer to `out`; the user turn and the (possibly partial) answer join the history."""
        self.conversation.turns.append({"role": "user", "content": user_text})
        body: dict[str, Any] = {"model": self.model, "messages": self.conversation.messages(), "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.args.max_tokens:
            body["max_tokens"] = self.args.max_tokens
        if self.args.temperature is not None:
            body["temperature"] = self.args.temperature
        stats, pieces = ReplyStats(), []
        start = first = time.perf_counter()
        try:
            with self.client.stream("POST", f"{self.base}/chat/completions", json=body,
                                    headers=headers(self.args.api_key)) as response:
                check(response)
                for event in iter_sse(response):
                    text = chat_delta_text(event)
                    if text:
                        now = time.perf_counter()
                        if stats.ttft_s is None:
                            stats.ttft_s, first = now - start, now
                        stats.decode_s = now - first
                        stats.num_tokens += 1
                        pieces.append(text)
                        self.out.write(text)
                        self.out.flush()
                    usage = event.get("usage")
                    if usage and usage.get("completion_tokens") is not None:
                        stats.num_tokens, stats.tokens_exact = int(usage["completion_tokens"]), True
        except KeyboardInterrupt:
            # Drop the whole client: that closes the socket mid-stream, which is how the server
            # learns to abort, and no half-read connection goes back into a pool.
            stats.stopped = True
            self.client.close()
            self.client = self._new_client()
        except (APIError, httpx.HTTPError) as exc:
            self.conversation.turns.pop()  # the server never answered this turn: let the user retry it
            self.out.write(f"\nerror: {exc}\n")
            return stats
        answer = "".join(pieces)
        self.conversation.turns.append({"role": "assistant", "content": answer})
        self.out.write("\n" + self.dim(stats.line()) + "\n")
        self.out.flush()
        return stats

    def command(self, line: str) -> bool:
        """Runs a /command; returns False when the session should end."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.conversation.turns.clear()
            self.out.write("conversation reset\n")
        elif name == "/system":
            if rest:
                self.conversation.system = rest
                self.out.write("system prompt set\n")
            else:
                self.out.write(f"system: {self.conversation.system or '(none)'}\n")
        elif name == "/save":
            self.save(rest)
        elif name == "/help":
            self.out.write(HELP + "\n")
        else:
            self.out.write(f"unknown command {name}; /help lists them\n")
        return True

    def save(self, path: str) -> None:
        if not path:
            self.out.write("usage: /save FILE\n")
            return
        data = {"model": self.model, "messages": self.conversation.messages()}
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)  # keep Chinese readable in the file
        except OSError as exc:
            self.out.write(f"cannot save: {exc}\n")
            return
        self.out.write(f"saved {len(data['messages'])} messages to {path}\n")


def read_message(prompt: str = ">>> ", more: str = "... ") -> str:
    """Reads one user message, joining `\\`-continued lines and \"\"\"-blocks. Raises EOFError on Ctrl-D."""
    line = input(prompt)
    if line.strip() == '"""':
        block: list[str] = []
        while (line := input(more)).strip() != '"""':
            block.append(line)
        return "\n".join(block)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = input(more)
    lines.append(line)
    return "\n".join(lines)


def repl(session: ChatSession) -> int:
    out = session.out
    out.write(session.dim(f"glmserve chat · model {session.model} · {session.base}\n"
                          "/help for commands · Ctrl-C stops an answer · Ctrl-D quits") + "\n")
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            out.write("\n")  # Ctrl-C at the prompt discards the line, like a shell
            continue
        except EOFError:
            out.write("\n")
            return 0
        if not text.strip():
            continue
        if text.startswith("/"):
            if not session.command(text.strip()):
                return 0
            continue
        session.ask(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glmserve chat", description="streaming terminal chat")
    p.add_argument("--url", default=default_url(), help="server base URL (env GLMSERVE_URL)")
    p.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--api-key", default=default_api_key(), help="bearer key (env GLMSERVE_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        session = ChatSession(args)
    except (APIError, httpx.HTTPError) as exc:
        print(f"glmserve chat: {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        return repl(session)
    finally:
        session.client.close()


if __name__ == "__main__":
    sys.exit(main())

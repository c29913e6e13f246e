"""Hostile and heavy clients (issue 21), measured against a running server.

Part `bodies`: /health is polled every 50 ms while one worst-case body at a time (each up to the
4 MiB body limit) is sent, received, checked and refused (or parsed and answered); reports, per body,
its answer and the /health latencies while it was in flight, and the p99 over every poll made while
an attack body was in flight (the issue's target: <= 100 ms).

Part `tasks`: time to first token of 8 chat clients (8-token streams, `rounds` each) alone, then the
same chats beside one pathological /v1/translate request (a 200,000-character word; punctuation and
mixed scripts), started first and left running; reports median and p99 of each (target: p99 within 3x).

    python -m server --max-queue 16 --max-num-seqs 8 --api-key sk-bench --self-test off --port 8321 &
    python -m benchmarks.bench_hostile --base-url http://127.0.0.1:8321 --api-key sk-bench --model default

The live tests (tests/reliability/test_hostile_clients.py, test_hostile_load.py) assert the behaviour
with generous bounds; this script measures the figures in docs/RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import median

import httpx

BODY_LIMIT = 4 * 1024 * 1024  # the server's default --max-request-bytes
CHAT = "/v1/chat/completions"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _fill(prefix: bytes, item: bytes, suffix: bytes, limit: int = BODY_LIMIT - 64) -> bytes:
    """prefix + item,item,... + suffix, as many items as fit the body limit."""
    count = (limit - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


def attack_bodies(model: str) -> list[tuple[str, str, bytes, bool]]:
    """(name, path, body, with_key): the bodies that cost the server the most per byte."""
    m = json.dumps(model).encode()
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    return [
        ("nested lists, no key", CHAT, _fill(b'{"messages": [', b"[[]]", b"]}"), False),
        ("nested lists", CHAT, _fill(b'{"messages": [', b"[[]]", b"]}"), True),
        ("nested lists, unknown path", "/nowhere", _fill(b'{"messages": [', b"[[]]", b"]}"), False),
        ("deep nesting (2M brackets)", CHAT, b'{"messages": ' + b"[" * (BODY_LIMIT // 2) + b"]" * (BODY_LIMIT // 2 - 64)
         + b"}", True),
        ("deep nesting within limits", CHAT, b'{"model": ' + m + b', "max_tokens": 1, '
         b'"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", '
         b'"json_schema": {"name": "a", "schema": '
         + b'{"type": "object", "properties": {"a": ' * 28 + b"{}" + b"}}" * 28 + b"}}}", True),
        ("many small strings", CHAT, _fill(b'{"stop": [', b'"a"', b"]}"), True),
        ("131k small strings (completions prompts)", "/v1/completions",
         json.dumps({"model": model, "prompt": ["a"] * 131_000, "max_tokens": 1}).encode(), True),
        ("many small numbers", CHAT, _fill(b'{"messages": [', b"1", b"]}"), True),
        ("huge integer (4M digits)", CHAT, b'{"model": ' + m + b', "max_tokens": ' + b"9" * (BODY_LIMIT - 200) + b"}",
         True),
        ("huge float (4M digits)", CHAT, b'{"model": ' + m + b', "temperature": 0.' + b"9" * (BODY_LIMIT - 200) + b"}",
         True),
        ("131k big numbers (completions prompt)", "/v1/completions",
         json.dumps({"model": model, "prompt": [2 ** 31 - 1] * 131_000, "max_tokens": 1}).encode(), True),
        ("131k token ids (completions prompt)", "/v1/completions",
         json.dumps({"model": model, "prompt": [1] * 131_000, "max_tokens": 1}).encode(), True),
        ("10k chat messages", CHAT,
         json.dumps({"model": model, "messages": [user("hello there")] * 10_000, "max_tokens": 1}).encode(), True),
        ("one 4 MB string", CHAT,
         json.dumps({"model": model, "messages": [user("ab " * (BODY_LIMIT // 3 - 100))], "max_tokens": 1}).encode(),
         True),
    ]


class Poller(threading.Thread):
    """GET /health every 50 ms; (start time, latency) per poll, a failure counted as 5 s."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.polls: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(self.base_url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.polls.append((started, time.monotonic() - started if ok else 5.0))
                time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))

    def during(self, start: float, end: float) -> list[float]:
        """Latencies of the polls that overlapped [start, end]."""
        return [lat for t, lat in self.polls if t <= end and t + lat >= start]


@dataclass
class BodyResult:
    name: str
    size: int
    status: int
    code: str | None
    seconds: float
    health: list[float] = field(default_factory=list)

    def line(self) -> str:
        worst = max(self.health) * 1000 if self.health else float("nan")
        return (f"{self.name:42s} {self.size / 1e6:5.2f} MB -> {self.status} {self.code}, "
                f"{self.seconds * 1000:6.0f} ms; "
                f"/health during it: {len(self.health)} polls, max {worst:.0f} ms")


def run_bodies(base_url: str, api_key: str, model: str, repeats: int) -> list[BodyResult]:
    bodies = attack_bodies(model)
    poller = Poller(base_url)
    poller.start()
    time.sleep(1.0)
    results = []
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats):
            for name, path, body, with_key in bodies:
                headers = {"Content-Type": "application/json"}
                if with_key:
                    headers["Authorization"] = f"Bearer {api_key}"
                started = time.monotonic()
                resp = client.post(base_url + path, content=body, headers=headers)
                ended = time.monotonic()
                try:
                    code = resp.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                time.sleep(0.2)  # let the polls that overlapped the request finish
                results.append(BodyResult(name, len(body), resp.status_code, code, ended - started,
                                          poller.during(started, ended)))
    poller.stop.set()
    poller.join(10)
    return results


def stream_ttft(client: httpx.Client, base_url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True,
            "ignore_eos": True}
    started = time.monotonic()
    first = None
    with client.stream("POST", base_url + CHAT, json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):  # the first token's text (not the role chunk)
                    first = time.monotonic()
    return (first or time.monotonic()) - started


def chat_ttfts(base_url: str, api_key: str, model: str, clients: int, rounds: int) -> list[float]:
    def one_client(_: int) -> list[float]:
        with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {api_key}"}) as client:
            return [stream_ttft(client, base_url, model) for _ in range(rounds)]

    with ThreadPoolExecutor(clients) as pool:
        return [t for ts in pool.map(one_client, range(clients)) for t in ts]


def engine_stats(base_url: str) -> dict:
    return httpx.get(base_url + "/ready", timeout=10).json()["engine"]


def beside_task(base_url: str, api_key: str, model: str, text: str, clients: int, rounds: int) -> list[float]:
    """The chats' TTFTs while one streaming /v1/translate of `text` runs (closed afterwards)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(timeout=600, headers=headers) as client:
        body = {"model": model, "text": text, "target_lang": "fr", "stream": True}
        with client.stream("POST", base_url + "/v1/translate", json=body) as resp:
            resp.raise_for_status()
            deadline = time.monotonic() + 300
            while engine_stats(base_url)["num_running"] == 0:  # chunking runs first, on a thread
                if time.monotonic() > deadline:
                    raise TimeoutError("the task never reached the engine")
                time.sleep(0.1)
            return chat_ttfts(base_url, api_key, model, clients, rounds)


def wait_idle(base_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine_stats(base_url)
        if s["num_running"] == 0 and s["num_waiting"] == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("the engine did not go idle")


PATHOLOGICAL = {"one 200k-char word": "x" * 200_000,
                "punctuation + CJK + Latin": "!?.,;" * 20_000 + "字" * 50_000 + "ab" * 25_000}


def ms(values: list[float]) -> str:
    return f"median {median(values) * 1000:.0f} ms, p99 {p99(values) * 1000:.0f} ms"


def run_tasks(base_url: str, api_key: str, model: str, clients: int, rounds: int) -> None:
    chat_ttfts(base_url, api_key, model, clients, 1)  # warm-up
    alone = chat_ttfts(base_url, api_key, model, clients, rounds)
    print(f"chats alone ({len(alone)} streams): {ms(alone)}")
    for name, text in PATHOLOGICAL.items():
        wait_idle(base_url)
        beside = beside_task(base_url, api_key, model, text, clients, rounds)
        print(f"chats beside /v1/translate of {name} ({len(beside)} streams): {ms(beside)}; "
              f"p99 {p99(beside) / p99(alone):.1f}x alone, median {median(beside) / median(alone):.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8321")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--model", default="default")
    p.add_argument("--part", choices=["bodies", "tasks", "all"], default="all")
    p.add_argument("--repeats", type=int, default=3, help="times each attack body is sent")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="chat streams per client")
    args = p.parse_args()
    if args.part in ("bodies", "all"):
        results = run_bodies(args.base_url, args.api_key, args.model, args.repeats)
        for r in results:
            print(r.line())
        during = [lat for r in results for lat in r.health]
        print(f"/health while an attack body was in flight: {len(during)} polls, p99 {p99(during) * 1000:.0f} ms, "
              f"max {max(during) * 1000:.0f} ms")
    if args.part in ("tasks", "all"):
        run_tasks(args.base_url, args.api_key, args.model, args.clients, args.rounds)


if __name__ == "__main__":
    main()

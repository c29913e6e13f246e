"""Runs batch lines through the server app in this process: every line is an HTTP request to the same
routes (validation, templates, errors, the engine) over an in-memory ASGI transport, with `concurrency`
of them in flight so the engine's batches stay full. Results are appended as they finish, flushed per
line, so a killed run loses nothing that was written and a rerun resumes.

    summary = asyncio.run(run_batch(app, "requests.jsonl", "results.jsonl", concurrency=64))
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from tqdm import tqdm

from server.batch.batch_file import BatchLine, done_ids, read_lines, result_line


@dataclass
class BatchSummary:
    num_skipped: int = 0  # already in the output
    num_ok: int = 0
    num_failed: int = 0  # an error status or an unrunnable line
    completion_tokens: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def output_tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def _open_for_append(path: str | Path) -> IO[str]:
    """Append mode; a torn last line (a run killed mid-write) is cut off first, so the file stays JSONL."""
    path = Path(path)
    if path.exists():
        with open(path, "rb+") as f:
            end = pos = f.seek(0, 2)
            while pos > 0:  # back to just after the last newline
                step = min(4096, pos)
                f.seek(pos - step)
                newline = f.read(step).rfind(b"\n")
                if newline >= 0:
                    pos = pos - step + newline + 1
                    break
                pos -= step
            if pos != end:
                f.truncate(pos)
    return open(path, "a", encoding="utf-8")


async def run_batch(app: Any, input_path: str | Path, output_path: str | Path, concurrency: int,
                    api_key: str | None = None, progress: bool = True) -> BatchSummary:
    done = done_ids(output_path)
    lines = list(read_lines(input_path, done))
    summary = BatchSummary(num_skipped=len(done))
    queue: asyncio.Queue[BatchLine] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    bar = tqdm(total=len(lines), desc="run-batch", unit="req", disable=not progress)
    start = time.perf_counter()
    with _open_for_append(output_path) as out:
        async with app.router.lifespan_context(app):  # starts the engine loop; shuts it down after
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://run-batch", headers=headers,
                                         timeout=None) as client:

                async def worker() -> None:
                    while not queue.empty():
                        line = queue.get_nowait()
                        out.write(await _run_line(client, line, summary) + "\n")
                        out.flush()
                        bar.update(1)

                await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


async def _run_line(client: httpx.AsyncClient, line: BatchLine, summary: BatchSummary) -> str:
    if line.error is not None:
        summary.num_failed += 1
        return result_line(line)
    try:
        resp = await client.post(line.url, json=line.body)
        body = resp.json()
    except Exception as e:  # noqa: BLE001 - one line's failure is that line's result, never the run's
        line.error = {"code": "request_failed", "message": f"{type(e).__name__}: {e}"}
        summary.num_failed += 1
        return result_line(line)
    summary.statuses[resp.status_code] = summary.statuses.get(resp.status_code, 0) + 1
    if resp.status_code < 400:
        summary.num_ok += 1
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            summary.completion_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    else:
        summary.num_failed += 1
    return result_line(line, resp.status_code, body, resp.headers.get("x-request-id"))

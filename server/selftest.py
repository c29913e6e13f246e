"""Start-up self-test of the served checkpoint: a short greedy chat in English and in Chinese must stop
by itself (eos, not max_tokens) and no streamed delta may contain U+FFFD (a broken character).

The result is logged and shown by /ready. With --self-test report (the default) the server is ready
while the test runs; with --self-test require /ready stays 503 until it has passed.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from model import SamplingParams
from server.state import SelfTestResult, ServerState

log = logging.getLogger("glmserve.server")

PROMPTS = {
    "en": "Say hello in one short sentence.",
    # a question the small default model answers in Chinese and ends by itself
    "zh": "用中文回答：中国的首都是哪里？",
}
MAX_TOKENS = 64


async def check_one(state: ServerState, lang: str, prompt: str) -> dict[str, Any]:
    engine = state.engine
    ids = engine.chat_template.encode([{"role": "user", "content": prompt}])
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    deltas: list[str] = []
    finish_reason = None
    async for out in engine.generate(f"selftest-{lang}-{uuid.uuid4().hex[:8]}", ids, params):
        deltas.append(out.text_delta)
        if out.finished:
            finish_reason = out.finish_reason
    text = "".join(deltas)
    broken = sum(d.count("\ufffd") for d in deltas)
    problems = []
    if finish_reason != "stop":
        problems.append(f"did not stop by itself within {MAX_TOKENS} tokens (finish_reason={finish_reason})")
    if broken:
        problems.append(f"{broken} U+FFFD characters in streamed deltas")
    if not text.strip():
        problems.append("empty answer")
    return {"lang": lang, "passed": not problems, "problems": problems, "finish_reason": finish_reason,
            "num_deltas": len(deltas), "answer": text[:200]}


async def run_self_test(state: ServerState) -> SelfTestResult:
    start = time.perf_counter()
    checks: list[dict[str, Any]] = []
    try:
        checks = list(await asyncio.gather(*(check_one(state, lang, p) for lang, p in PROMPTS.items())))
        status = "passed" if all(c["passed"] for c in checks) else "failed"
    except Exception as e:  # noqa: BLE001 - a crashing self-test is a failed one, reported
        log.exception("self-test crashed")
        checks.append({"lang": None, "passed": False, "problems": [f"{type(e).__name__}: {e}"]})
        status = "failed"
    result = SelfTestResult(status=status, detail=checks, seconds=time.perf_counter() - start)
    state.self_test = result
    level = logging.INFO if status == "passed" else logging.WARNING
    log.log(level, "self-test %s", status, extra={"fields": {"self_test": result.to_dict()}})
    return result

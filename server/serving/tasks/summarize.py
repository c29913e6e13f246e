"""POST /v1/summarize: map-reduce summarization of any length with length and style control.

Text that fits one prompt is summarized in one generation. Longer text is cut into token-budgeted
chunks (text_chunking.py); the chunks are summarized concurrently (map), the partial summaries are
packed into prompts that fit and merged concurrently (reduce), level after level, until one prompt
holds them all; that last prompt makes the answer. Only the answer streams, through LengthLimiter
(length_control.py), which also decides when to stop generating. The non-streamed answer is the same
stream collected, so both are equal at temperature 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from server.errors import APIError, bad_request
from server.lora import response_model_name
from server.protocol.tasks import Summary, SummarizeRequest
from server.serving.admission import check_model, new_request_id
from server.serving.engine_stream import until_disconnected
from server.serving.tasks.langdetect import detect_language, language_name, normalize_language_code
from server.serving.tasks.length_control import LengthLimiter, count_length
from server.serving.respond import begin_request, finish_json, stream_response
from server.serving.tasks.task_engine import TaskRunner
from server.serving.tasks.task_prompts import PromptSet, display_language, prompts_for, render
from server.serving.tasks.task_stream import check_sampling, collect_text, task_events
from server.serving.tasks.text_chunking import chunk_text, pack_texts
from server.state import ServerState

CHUNK_TOKENS_MAX = 1536  # small models summarize a chunk of this size better than a whole long context
MAP_TOKENS = 160         # one partial summary
DEFAULT_OUTPUT_TOKENS = {"paragraph": 256, "bullets": 320, "headline": 32}
MAX_REDUCE_LEVELS = 12   # each level at least halves the parts; 12 covers any input that fits in memory
CJK_OUTPUT = {"zh", "ja", "ko"}


@dataclass
class SummaryPlan:
    text: str
    language: str   # output language code
    unit: str       # words | chars
    style: str
    max_length: int | None
    prompts: PromptSet
    tokens_per_unit: float  # output tokens per word / char, measured on the input when it is that language

    @property
    def lang_name(self) -> str:
        return display_language(self.prompts, self.language, language_name(self.language))

    def output_tokens(self) -> tuple[int, int]:
        """(max_tokens, min_tokens) of the answer: enough tokens to overshoot max_length so the
        limiter can cut at a sentence, and a floor so a terse model still reaches ~80% of it."""
        if self.max_length is None:
            return DEFAULT_OUTPUT_TOKENS[self.style], 0
        target = self.max_length * self.tokens_per_unit
        min_tokens = 0 if self.style == "headline" else int(0.9 * target)
        return math.ceil(1.6 * target) + 8, min_tokens


def plan_summary(state: ServerState, body: SummarizeRequest) -> SummaryPlan:
    """Validates what pydantic cannot (empty text, language codes) and fixes the defaults."""
    if not body.text.strip():
        raise bad_request("text must not be empty", param="text", code="empty_text")
    source = detect_language(body.text)
    language = source
    if body.language is not None:
        language = normalize_language_code(body.language)
        if language is None:
            raise bad_request(f"unknown language code {body.language!r}", param="language", code="unsupported_language")
    if language == "und":
        language = "en"
    unit = body.length_unit or ("chars" if language in CJK_OUTPUT else "words")
    tokenizer = state.engine.tokenizer
    ratio = 1.6 if unit == "words" else 1.5  # a guess for output in another language than the input
    if language == source:
        sample = body.text[:4000]
        ratio = len(tokenizer.encode(sample)) / max(1, count_length(sample, unit))
    return SummaryPlan(body.text, language, unit, body.style, body.max_length,
                       prompts_for(state.engine.model_config.model_type), max(0.5, ratio))


class Summarizer:
    """One summarize request's map-reduce over a TaskRunner."""

    def __init__(self, runner: TaskRunner, plan: SummaryPlan) -> None:
        self.runner = runner
        self.plan = plan
        self.answer_tokens = plan.output_tokens()
        limit = runner.state.context_limit
        overhead = max(len(render(runner.state.engine, m)) for m in self._empty_prompts()) + 8
        reserve = min(max(self.answer_tokens[0], MAP_TOKENS), limit // 3)
        self.budget = min(CHUNK_TOKENS_MAX, limit - overhead - reserve)
        if self.budget < 16:
            raise bad_request(f"the model's context of {limit} tokens is too small for a summary prompt "
                              f"({overhead} tokens of instructions)", param="text", code="context_length_exceeded")
        # a partial summary at most half a prompt: each reduce level then at least halves the parts
        self.map_tokens = max(8, min(MAP_TOKENS, self.budget // 2 - 8))
        self.chunks: list[str] = []

    def _empty_prompts(self) -> list[list[dict]]:
        p, lang = self.plan.prompts, self.plan.lang_name
        final = p.summarize_final("", lang, self.plan.style, self.plan.max_length, self.plan.unit)
        return [p.summarize_map("", lang), p.summarize_reduce("", lang), final]

    def split(self) -> None:
        self.chunks = [c for c in chunk_text(self.plan.text, self.runner.count_tokens, self.budget) if c.strip()]

    async def _generate(self, texts: list[str], reduce: bool) -> list[str]:
        p, lang, engine = self.plan.prompts, self.plan.lang_name, self.runner.state.engine
        build = p.summarize_reduce if reduce else p.summarize_map
        jobs = [(render(engine, build(t.strip(), lang)), self.map_tokens) for t in texts]
        return await self.runner.complete_all(jobs)

    async def reduce_to_one(self) -> str:
        """Map, then reduce level by level, until the parts fit one prompt together."""
        if len(self.chunks) == 1:
            return self.chunks[0].strip()
        parts = await self._generate(self.chunks, reduce=False)
        for _ in range(MAX_REDUCE_LEVELS):
            groups = pack_texts(parts, self.runner.count_tokens, self.budget)
            if len(groups) == 1:
                return "\n\n".join(groups[0])
            # a part that decoded to more tokens than it was generated with is cut to fit
            groups = [[chunk_text(g[0], self.runner.count_tokens, self.budget)[0]] if len(g) == 1 else g
                      for g in groups]
            parts = await self._generate(["\n\n".join(g) for g in groups], reduce=True)
        raise APIError(500, "the summary did not converge", code="summary_failed")

    async def answer(self) -> AsyncIterator[str]:
        """The summary's text deltas, length-limited."""
        source = await self.reduce_to_one()
        plan = self.plan
        ids = render(self.runner.state.engine, plan.prompts.summarize_final(
            source, plan.lang_name, plan.style, plan.max_length, plan.unit))
        max_tokens, min_tokens = self.answer_tokens
        limiter = LengthLimiter(plan.max_length, plan.unit, plan.style)
        async with contextlib.aclosing(self.runner.stream(ids, max_tokens, min_tokens)) as deltas:
            async for delta in deltas:
                if text := limiter.feed(delta):
                    yield text
                if limiter.done:
                    break  # leaving the stream aborts the generation: nothing more is needed
        if rest := limiter.finish():
            yield rest


async def create_summary(state: ServerState, request: Request, body: SummarizeRequest) -> Response:
    check_model(state, body.model)
    plan = plan_summary(state, body)
    check_sampling(state, body)
    ctx = begin_request(state, request, new_request_id("sum"), body.stream)
    try:
        runner = TaskRunner(state, ctx, body)
        summarizer = Summarizer(runner, plan)
        await asyncio.to_thread(summarizer.split)  # tokenizing 200,000 characters takes a while
    except BaseException:
        ctx.close()
        raise
    extra = {"num_chunks": len(summarizer.chunks)}
    if body.stream:
        return stream_response(state, ctx, task_events(state, ctx, "summary.chunk", summarizer.answer(), extra,
                                                       lambda: runner.finish_reason))
    try:
        text = await until_disconnected(request, collect_text(summarizer.answer()))
    finally:
        ctx.close()
    return finish_json(state, Summary(id=ctx.request_id, created=ctx.created, model=response_model_name(state),
                                      summary=text, finish_reason=runner.finish_reason, usage=ctx.trace.usage(),
                                      num_chunks=len(summarizer.chunks),
                                      timings=ctx.trace.timings() if state.settings.timings else None))

"""POST /v1/translate: paragraph-parallel translation with glossary checking.

The text is split into paragraphs (a paragraph over the token budget into sentence groups); every
piece is translated concurrently (the engine batches them) and the translations are put back in the
original order with the original paragraph breaks. The answer streams piece by piece in order: piece
i's text goes out live once pieces 0..i-1 are out, the later ones keep generating meanwhile. The
glossary is given in the prompt, then checked: a term found in a piece whose required translation is
missing from that piece's output is reported in `glossary_unhonored`.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from server.errors import bad_request
from server.lora import response_model_name
from server.protocol.tasks import Translation, TranslateRequest
from server.serving.admission import check_model, new_request_id
from server.serving.engine_stream import until_disconnected
from server.serving.tasks.langdetect import detect_language, language_name, normalize_language_code
from server.serving.respond import begin_request, finish_json, stream_response
from server.serving.tasks.task_engine import TaskRunner, gather_in_order
from server.serving.tasks.task_prompts import display_language, prompts_for, render
from server.serving.tasks.task_stream import check_sampling, collect_text, task_events
from server.serving.tasks.text_chunking import chunk_text, split_paragraphs
from server.serving.tasks.translate_text import PieceCleaner, unhonored_terms
from server.state import ServerState

PIECE_TOKENS_MAX = 512  # small models translate a paragraph better than a page
CJK_TARGETS = {"zh", "ja", "ko"}


@dataclass
class Piece:
    source: str       # text to translate ("" for a blank paragraph, passed through)
    before: str = ""  # whitespace before it in the original
    after: str = ""   # what follows it: " " between sentences of one paragraph, the paragraph break after the last


@dataclass
class TranslationJob:
    source_lang: str
    target_lang: str
    glossary: dict[str, str]
    pieces: list[Piece] = field(default_factory=list)
    unhonored: list[str] = field(default_factory=list)


def plan_translation(body: TranslateRequest) -> TranslationJob:
    if not body.text.strip():
        raise bad_request("text must not be empty", param="text", code="empty_text")
    target = normalize_language_code(body.target_lang)
    if target is None:
        raise bad_request(f"unknown language code {body.target_lang!r}", param="target_lang",
                          code="unsupported_language")
    if body.source_lang.strip().lower() in ("auto", ""):
        source = detect_language(body.text)
    else:
        source = normalize_language_code(body.source_lang)
        if source is None:
            raise bad_request(f"unknown language code {body.source_lang!r}", param="source_lang",
                              code="unsupported_language")
    glossary = body.glossary or {}
    for term, translation in glossary.items():
        if not term.strip() or not translation.strip():
            raise bad_request("glossary terms and their translations must not be empty", param="glossary")
    return TranslationJob(source, target, {k.strip(): v.strip() for k, v in glossary.items()})


def split_pieces(text: str, count_tokens, budget: int, joiner: str) -> list[Piece]:
    """Paragraphs, each cut into sentence groups within `budget` when it is longer."""
    pieces: list[Piece] = []
    for paragraph in split_paragraphs(text):
        body = paragraph.strip()
        before = paragraph[:len(paragraph) - len(paragraph.lstrip())]
        after = paragraph[len(paragraph.rstrip()):]
        if not body:
            pieces.append(Piece("", before, after))
            continue
        parts = [p.strip() for p in chunk_text(body, count_tokens, budget) if p.strip()]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            pieces.append(Piece(part, before if i == 0 else "", after if last else joiner))
    return pieces


class Translator:
    def __init__(self, runner: TaskRunner, job: TranslationJob, text: str) -> None:
        self.runner = runner
        self.job = job
        self.text = text
        engine = runner.state.engine
        self.prompts = prompts_for(engine.model_config.model_type)
        self.source_name = display_language(self.prompts, job.source_lang, language_name(job.source_lang))
        self.target_name = display_language(self.prompts, job.target_lang, language_name(job.target_lang))
        overhead = len(render(engine, self._messages(""))) + 8
        # output budget: twice the source tokens (+16), the context must hold prompt + output
        self.budget = min(PIECE_TOKENS_MAX, (runner.state.context_limit - overhead - 16) // 3)
        if self.budget < 8:
            raise bad_request(f"the model's context of {runner.state.context_limit} tokens is too small for a "
                              f"translation prompt ({overhead} tokens of instructions)", param="text",
                              code="context_length_exceeded")

    def _messages(self, text: str) -> list[dict]:
        return self.prompts.translate(text, self.source_name, self.target_name, self.job.glossary)

    def split(self) -> None:
        joiner = "" if self.job.target_lang in CJK_TARGETS else " "
        if self.job.source_lang == self.job.target_lang:
            self.job.pieces = []  # nothing to translate: the text comes back as it is
            return
        self.job.pieces = split_pieces(self.text, self.runner.count_tokens, self.budget, joiner)

    @property
    def num_chunks(self) -> int:
        return sum(1 for p in self.job.pieces if p.source)

    async def _translate(self, piece: Piece, queue: asyncio.Queue) -> None:
        """Puts the piece's cleaned deltas on `queue`, then None."""
        if piece.source:
            ids = render(self.runner.state.engine, self._messages(piece.source))
            max_tokens = 2 * self.runner.count_tokens(piece.source) + 16
            cleaner = PieceCleaner(piece.source)
            async with contextlib.aclosing(self.runner.stream(ids, max_tokens)) as deltas:
                async for delta in deltas:
                    queue.put_nowait(cleaner.feed(delta))
                    if cleaner.done:
                        break  # the model went on past the translation (a comment, a new paragraph)
            queue.put_nowait(cleaner.finish())
            self.job.unhonored += unhonored_terms(self.job.glossary, piece.source, cleaner.text)
        queue.put_nowait(None)

    async def deltas(self) -> AsyncIterator[str]:
        """The translation in order while all pieces generate concurrently."""
        if not self.job.pieces:
            yield self.text
            return
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in self.job.pieces]
        work = asyncio.ensure_future(gather_in_order(
            [lambda p=p, q=q: self._translate(p, q) for p, q in zip(self.job.pieces, queues)]))
        try:
            for piece, queue in zip(self.job.pieces, queues):
                yield piece.before
                while (delta := await self._next(queue, work)) is not None:
                    yield delta
                yield piece.after
            await work
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
        self.job.unhonored = list(dict.fromkeys(self.job.unhonored))

    @staticmethod
    async def _next(queue: asyncio.Queue, work: asyncio.Future) -> str | None:
        """The next item of a piece's queue, or the failure of the work that fills it."""
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        work.result()  # raises the failure; a finished work has filled every queue, so this is a failure
        return await queue.get()


async def create_translation(state: ServerState, request: Request, body: TranslateRequest) -> Response:
    check_model(state, body.model)
    job = plan_translation(body)
    check_sampling(state, body)
    ctx = begin_request(state, request, new_request_id("tr"), body.stream)
    try:
        runner = TaskRunner(state, ctx, body)
        translator = Translator(runner, job, body.text)
        await asyncio.to_thread(translator.split)
    except BaseException:
        ctx.close()
        raise

    def extra() -> dict:
        return {"source_lang": job.source_lang, "target_lang": job.target_lang,
                "glossary_unhonored": job.unhonored, "num_chunks": translator.num_chunks}

    if body.stream:
        return stream_response(state, ctx, task_events(state, ctx, "translation.chunk", translator.deltas(), extra,
                                                       lambda: runner.finish_reason))
    try:
        text = await until_disconnected(request, collect_text(translator.deltas()))
    finally:
        ctx.close()
    return finish_json(state, Translation(id=ctx.request_id, created=ctx.created, model=response_model_name(state),
                                          translation=text, finish_reason=runner.finish_reason,
                                          usage=ctx.trace.usage(),
                                          timings=ctx.trace.timings() if state.settings.timings else None, **extra()))

"""POST /v1/completions: one or more prompts (text or token ids) -> text_completion objects.

Prompt p's choice j is choice index p * n + j, as OpenAI numbers them; each prompt is its own engine
request and their streams are merged in arrival order.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from model import RequestOutput
from server.errors import bad_request
from server.lora import response_model_name
from server.protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from server.serving.admission import check_model, clamp_headers, new_request_id, plan_max_tokens, sampling_params
from server.serving.engine_stream import merge, run_engine, until_disconnected
from server.serving.openai.logprobs import append_completion_logprobs, append_echo_logprobs, vllm_prompt_logprobs
from server.serving.respond import RequestContext, begin_request, finish_json, stream_response
from server.state import ServerState


# Each prompt is its own engine request but the whole batch holds one --max-queue slot: this bounds
# what one request can put on the engine and into its response (2000 prompts x n=16 were accepted).
MAX_CHOICES_PER_REQUEST = 256
# Prompt scores (token + alternatives) one response may carry: each costs ~45 bytes of JSON, and 256
# prompts x 8,192 tokens x 21 alternatives would build gigabytes from a 4 MB request.
MAX_PROMPT_SCORES_PER_REQUEST = 1_000_000


@dataclass
class PreparedPrompt:
    token_ids: list[int]
    text: str  # for echo
    first_token: str = ""  # the first token's text, for echo with logprobs (nothing scores it)
    token_offsets: list[int] = field(default_factory=list)  # where each token's text starts in `text`


def prepare_prompts(state: ServerState, body: CompletionRequest) -> list[PreparedPrompt]:
    tokenizer = state.engine.tokenizer
    vocab = state.engine.model_config.vocab_size
    prepared = []
    for prompt in body.prompts():
        if isinstance(prompt, str):
            # the prompt's text stays text (control-token strings in it too); only the prefix is control
            prefix = tokenizer.prefix_token_ids if body.add_special_tokens else []
            ids = prefix + tokenizer.encode(prompt)
            # echo with logprobs scores every token, the prefix too, so the echoed text starts with it
            text = (tokenizer.decode(prefix, skip_special_tokens=False) if body.echo_logprobs else "") + prompt
        else:
            if any(t < 0 or t >= vocab for t in prompt):
                raise bad_request(f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_prompt")
            ids, text = list(prompt), (tokenizer.decode(list(prompt)) if body.echo else "")
        if body.echo_logprobs and ids:
            prepared.append(PreparedPrompt(ids, text, tokenizer.token_to_str(ids[0]), _token_offsets(tokenizer, ids)))
        else:
            prepared.append(PreparedPrompt(ids, text))
    return prepared


def _token_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token in the decoded text; a token inside a multi-byte character
    starts where that character does."""
    detok, length, offsets = tokenizer.detokenizer(skip_special_tokens=False), 0, []
    for token_id in ids:
        offsets.append(length)
        length += len(detok.add(token_id))
    return offsets


async def create_completion(state: ServerState, request: Request, body: CompletionRequest) -> Response:
    check_model(state, body.model)
    num_choices = len(body.prompts()) * body.n
    if num_choices > MAX_CHOICES_PER_REQUEST:
        raise bad_request(f"this request asks for {num_choices} choices (prompts x n); at most "
                          f"{MAX_CHOICES_PER_REQUEST} are allowed", param="prompt", code="too_many_choices")
    prompts = await asyncio.to_thread(prepare_prompts, state, body)  # tokenizing 4 MB must not stall the loop
    scores_prompt = body.prompt_score_alternatives is not None
    if body.max_tokens == 0 and not scores_prompt:
        raise bad_request("max_tokens must be at least 1, got 0 (0 is allowed with echo and logprobs, or "
                          "prompt_logprobs)", param="max_tokens")
    _check_prompt_scores(body, prompts)
    budgets = [plan_max_tokens(state, len(p.token_ids), body.max_tokens, "max_tokens", "prompt", scores_prompt)
               for p in prompts]
    params = [sampling_params(state, body.to_sampling_params, b.max_tokens, {"top_logprobs": "logprobs"})
              for b in budgets]
    ctx = begin_request(state, request, new_request_id("cmpl"), body.stream,
                        prompt=[p.text or p.token_ids for p in prompts] if state.settings.log_prompts else None)
    engine_ids = [ctx.request_id] if len(prompts) == 1 else [f"{ctx.request_id}-{i}" for i in range(len(prompts))]
    outputs = merge([run_engine(state, ctx.ticket, ctx.trace, rid, p.token_ids, sp)
                     for rid, p, sp in zip(engine_ids, prompts, params)])
    numbering = {rid: i * body.n for i, rid in enumerate(engine_ids)}
    headers = clamp_headers(budgets)
    if body.stream:
        return stream_response(state, ctx, completion_chunks(state, body, ctx, prompts, numbering, outputs), headers)
    try:
        completion = await until_disconnected(request, collect_completion(state, body, ctx, prompts, numbering,
                                                                          outputs))
    finally:
        ctx.close()
    return finish_json(state, completion, headers)


def _check_prompt_scores(body: CompletionRequest, prompts: list[PreparedPrompt]) -> None:
    # every choice repeats its prompt's scores, once per format asked for
    if body.prompt_score_alternatives is None:
        return
    formats = int(body.echo_logprobs) + int(body.prompt_logprobs is not None)
    entries = sum(len(p.token_ids) for p in prompts) * (body.prompt_score_alternatives + 1) * body.n * formats
    if entries > MAX_PROMPT_SCORES_PER_REQUEST:
        raise bad_request(f"scoring these prompts would return {entries} logprob entries (prompt tokens x "
                          f"(alternatives + 1) x n); at most {MAX_PROMPT_SCORES_PER_REQUEST} are allowed: send "
                          "fewer or shorter prompts, or ask for fewer alternatives",
                          param="prompt_logprobs" if body.prompt_logprobs is not None else "logprobs",
                          code="too_many_logprobs")


@dataclass
class _ChoiceAcc:
    text: list[str] = field(default_factory=list)
    offset: int = 0
    logprobs: CompletionLogprobs = field(default_factory=CompletionLogprobs)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list | None = None


def _echo(prompts: list[PreparedPrompt], n: int) -> list[str]:
    return [p.text for p in prompts for _ in range(n)]


async def collect_completion(state: ServerState, body: CompletionRequest, ctx: RequestContext,
                             prompts: list[PreparedPrompt], numbering: dict[str, int],
                             outputs: AsyncIterator[RequestOutput]) -> Completion:
    echoes = _echo(prompts, body.n) if body.echo else [""] * (len(prompts) * body.n)
    accs = [_ChoiceAcc(text=[e], offset=len(e)) for e in echoes]
    async for out in outputs:
        index = numbering[out.request_id] + out.index
        acc = accs[index]
        if out.prompt_logprobs is not None:  # the first output: the prompt's tokens lead the logprobs
            acc.prompt_logprobs = out.prompt_logprobs
            _append_echo_scores(acc.logprobs, body, prompts[index // body.n], out.prompt_logprobs)
        if body.logprobs is not None and out.logprobs:
            acc.offset = append_completion_logprobs(acc.logprobs, out.logprobs, acc.offset)
        acc.text.append(out.text_delta)
        if out.finished:
            acc.finish_reason, acc.stop_reason = out.finish_reason, out.stop_reason
    choices = [CompletionChoice(index=i, text="".join(a.text), finish_reason=a.finish_reason, stop_reason=a.stop_reason,
                                logprobs=a.logprobs if body.logprobs is not None else None,
                                prompt_logprobs=_vllm_prompt_logprobs(body, a.prompt_logprobs))
               for i, a in enumerate(accs)]
    return Completion(id=ctx.request_id, created=ctx.created, model=response_model_name(state), choices=choices,
                      usage=ctx.trace.usage(), system_fingerprint=state.system_fingerprint,
                      timings=ctx.trace.timings() if state.settings.timings else None)


def _append_echo_scores(acc: CompletionLogprobs, body: CompletionRequest, prompt: PreparedPrompt,
                        scored: list) -> bool:
    """With echo + logprobs, the prompt's tokens and scores go first into `acc`; True when they did."""
    if not body.echo_logprobs:
        return False
    append_echo_logprobs(acc, prompt.first_token, scored, prompt.token_offsets, body.logprobs or 0)
    return True


def _vllm_prompt_logprobs(body: CompletionRequest, scored: list | None) -> list | None:
    """vLLM's `prompt_logprobs` field, only when the request named it (echo alone scores silently)."""
    return vllm_prompt_logprobs(scored) if body.prompt_logprobs is not None and scored is not None else None


async def completion_chunks(state: ServerState, body: CompletionRequest, ctx: RequestContext,
                            prompts: list[PreparedPrompt], numbering: dict[str, int],
                            outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[dict[str, Any]]:
    """One chunk per output, a finish chunk per choice (with timings), the usage chunk on request."""
    base: dict[str, Any] = {"id": ctx.request_id, "object": "text_completion", "created": ctx.created,
                            "model": response_model_name(state), "system_fingerprint": state.system_fingerprint}
    if body.include_usage:
        base["usage"] = None
    echoes = _echo(prompts, body.n) if body.echo else [""] * (len(prompts) * body.n)
    offsets = [len(e) for e in echoes]
    if body.echo and not body.echo_logprobs:  # with logprobs the echo waits for the prompt's scores
        for i, echo in enumerate(echoes):
            yield {**base, "choices": [{"index": i, "text": echo, "logprobs": None, "finish_reason": None}]}
    async for out in outputs:
        index = numbering[out.request_id] + out.index
        text, extra = out.text_delta, {}
        acc = CompletionLogprobs() if body.logprobs is not None else None  # none built per token otherwise
        if out.prompt_logprobs is not None:
            scored = _vllm_prompt_logprobs(body, out.prompt_logprobs)
            if scored is not None:
                extra["prompt_logprobs"] = [e and {k: v.model_dump() for k, v in e.items()} for e in scored]
            if acc is not None and _append_echo_scores(acc, body, prompts[index // body.n], out.prompt_logprobs):
                text = echoes[index] + text
        if acc is not None and out.logprobs:
            offsets[index] = append_completion_logprobs(acc, out.logprobs, offsets[index])
        logprobs = acc.model_dump() if acc is not None and acc.tokens else None
        if text or logprobs or extra:
            yield {**base, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": None,
                                        **extra}]}
        if out.finished:
            final = {**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                          "finish_reason": out.finish_reason, "stop_reason": out.stop_reason}]}
            if state.settings.timings:
                final["timings"] = ctx.trace.timings().model_dump()
            yield final
    if body.include_usage:
        last = {**base, "choices": [], "usage": ctx.trace.usage().model_dump()}
        if state.settings.timings:
            last["timings"] = ctx.trace.timings().model_dump()
        yield last

"""POST /v1/chat/completions: messages -> template -> engine -> chat.completion or its chunk stream.

Structured output (response_format, tools / tool_choice) lives in server/serving/openai/structured.py: a ToolPlan
per request renders tools, constrains decoding and reads tool calls back out of each choice. Reasoning
(`<think>`) and tool calls are split out of each choice's text by server/serving/openai/choice.py.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from model import ChatTemplateError, RequestOutput, SamplingParamsError
from server.errors import bad_request
from server.lora import response_model_name
from server.protocol import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, ChoiceLogprobs)
from server.serving.admission import check_model, clamp_headers, new_request_id, plan_max_tokens, sampling_params
from server.serving.engine_stream import run_engine, until_disconnected
from server.serving.openai.choice import ChoiceStream, parse_choice, plan_reasoning, with_reasoning_tokens
from server.serving.openai.logprobs import chat_logprobs, vllm_prompt_logprobs
from server.serving.respond import RequestContext, begin_request, finish_json, stream_response
from server.serving.openai.structured import ToolPlan, apply_plan, plan_tools, structured_output_processors, tool_template
from server.state import ServerState


# ---- the endpoint -----------------------------------------------------------------------------------
# names the template call passes itself: one in chat_template_kwargs made the call a TypeError (a 500)
RESERVED_TEMPLATE_KWARGS = frozenset({"self", "messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


def encode_messages(state: ServerState, body: ChatCompletionRequest, plan: ToolPlan) -> list[int]:
    clash = RESERVED_TEMPLATE_KWARGS.intersection(body.chat_template_kwargs or {})
    if clash:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(sorted(clash))}",
                          param="chat_template_kwargs")
    tools = body.template_tools() if plan.renders_tools else None
    try:
        return tool_template(state).encode(body.template_messages(), tools, body.add_generation_prompt,
                                           **(body.chat_template_kwargs or {}))
    except ChatTemplateError as e:
        raise bad_request(str(e), param="messages", code="invalid_messages") from e
    except SamplingParamsError as e:  # an unsupported content part
        raise bad_request(str(e), param=e.param) from e


@dataclass
class ChatRun:
    """One admitted chat request running in the engine: what collect_chat / chat_chunks consume.
    The Responses and Anthropic Messages adapters start one too and convert its result."""
    body: ChatCompletionRequest
    plan: ToolPlan
    ctx: RequestContext
    outputs: AsyncIterator[RequestOutput]
    headers: dict[str, str]
    num_prompt_tokens: int = 0  # known before the engine answers (Anthropic's message_start carries it)

    async def collect(self, state: ServerState) -> ChatCompletion:
        return await collect_chat(state, self.body, self.ctx, self.outputs, self.plan)

    def chunks(self, state: ServerState) -> AsyncIterator[dict[str, Any]]:
        return chat_chunks(state, self.body, self.ctx, self.outputs, self.plan)


async def start_chat(state: ServerState, request: Request, body: ChatCompletionRequest,
                     id_prefix: str = "chatcmpl") -> ChatRun:
    """Validation (400s), template, budget, admission (429/503), then the engine request."""
    check_model(state, body.model)
    plan = plan_tools(state, body)
    body = apply_plan(body, plan)
    # off the event loop: rendering and tokenizing 10,000 messages took ~2 s, during which nothing else ran
    prompt_ids = await asyncio.to_thread(encode_messages, state, body, plan)
    plan = plan.with_reasoning(plan_reasoning(state, body, prompt_ids))
    budget = plan_max_tokens(state, len(prompt_ids), body.requested_max_tokens, body.max_tokens_param, "messages")
    params = sampling_params(state, body.to_sampling_params, budget.max_tokens,
                             logits_processors=await structured_output_processors(body, state, plan))
    ctx = begin_request(state, request, new_request_id(id_prefix), body.stream,
                        prompt=body.template_messages() if state.settings.log_prompts else None)
    outputs = run_engine(state, ctx.ticket, ctx.trace, ctx.request_id, prompt_ids, params)
    return ChatRun(body, plan, ctx, outputs, clamp_headers([budget]), len(prompt_ids))


async def create_chat_completion(state: ServerState, request: Request, body: ChatCompletionRequest) -> Response:
    run = await start_chat(state, request, body)
    if body.stream:
        return stream_response(state, run.ctx, run.chunks(state), run.headers)
    try:
        completion = await until_disconnected(request, run.collect(state))
    finally:
        run.ctx.close()
    return finish_json(state, completion, run.headers)


# ---- non-streaming ------------------------------------------------------------------------------------
@dataclass
class _ChoiceAcc:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


async def collect_chat(state: ServerState, body: ChatCompletionRequest, ctx: RequestContext,
                       outputs: AsyncIterator[RequestOutput], plan: ToolPlan | None = None) -> ChatCompletion:
    plan = plan or ToolPlan()
    accs = [_ChoiceAcc() for _ in range(body.n)]
    prompt_logprobs = None
    async for out in outputs:
        acc = accs[out.index]
        if out.prompt_logprobs is not None and prompt_logprobs is None:
            prompt_logprobs = vllm_prompt_logprobs(out.prompt_logprobs)
        acc.text.append(out.text_delta)
        acc.token_ids += out.token_ids
        if body.logprobs and out.logprobs:
            acc.logprobs += out.logprobs
        if out.finished:
            acc.finish_reason, acc.stop_reason = out.finish_reason, out.stop_reason
    choices = []
    for i, acc in enumerate(accs):
        parsed = parse_choice("".join(acc.text), plan.reasoning, plan)
        finish = "tool_calls" if parsed.tool_calls and acc.finish_reason == "stop" else acc.finish_reason
        message = AssistantMessage(content=parsed.content, reasoning_content=parsed.reasoning,
                                   reasoning=parsed.reasoning, tool_calls=parsed.tool_calls)
        choices.append(ChatChoice(
            index=i, message=message,
            logprobs=ChoiceLogprobs(content=chat_logprobs(acc.logprobs)) if body.logprobs else None,
            finish_reason=finish, stop_reason=acc.stop_reason))
    return ChatCompletion(id=ctx.request_id, created=ctx.created, model=response_model_name(state), choices=choices,
                          usage=with_reasoning_tokens(ctx.trace.usage(), plan.reasoning, [a.token_ids for a in accs]),
                          system_fingerprint=state.system_fingerprint,
                          prompt_logprobs=prompt_logprobs,
                          timings=ctx.trace.timings() if state.settings.timings else None)


# ---- streaming ------------------------------------------------------------------------------------------
async def chat_chunks(state: ServerState, body: ChatCompletionRequest, ctx: RequestContext,
                      outputs: AsyncIterator[RequestOutput], plan: ToolPlan | None = None
                      ) -> AsyncIterator[dict[str, Any]]:
    """Role chunk per choice, one content chunk per output, an empty-delta finish chunk per choice
    (with timings), then the usage chunk when stream_options.include_usage asks for it."""
    base: dict[str, Any] = {"id": ctx.request_id, "object": "chat.completion.chunk", "created": ctx.created,
                            "model": response_model_name(state), "system_fingerprint": state.system_fingerprint}
    if body.include_usage:
        base["usage"] = None  # OpenAI sends usage: null on every chunk but the last

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None,
              **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [{**choice, **extra}]}

    plan = plan or ToolPlan()
    choice_streams = [ChoiceStream(plan.reasoning, plan) for _ in range(body.n)]
    choice_ids: list[list[int]] = [[] for _ in range(body.n)]  # for usage's reasoning_tokens
    for i in range(body.n):
        yield chunk(i, {"role": "assistant", "content": "", "refusal": None})
    async for out in outputs:
        logprobs = None
        if body.logprobs and out.logprobs:
            logprobs = {"content": [lp.model_dump() for lp in chat_logprobs(out.logprobs)], "refusal": None}
        # reasoning deltas, then content (held while it may be a tool call) and tool-call deltas
        stream = choice_streams[out.index]
        if plan.reasoning is not None:
            choice_ids[out.index] += out.token_ids
        deltas = stream.push(out.text_delta) + (stream.finish() if out.finished else [])
        if logprobs and not deltas:
            deltas = [{}]
        for n, delta in enumerate(deltas):
            yield chunk(out.index, delta, logprobs if n == 0 else None)
        if out.finished:
            extra: dict[str, Any] = {"stop_reason": out.stop_reason}
            finish = out.finish_reason
            if stream.has_tool_calls and finish == "stop":
                finish = "tool_calls"
            final = chunk(out.index, {}, None, finish, **extra)
            if state.settings.timings:
                final["timings"] = ctx.trace.timings().model_dump()
            yield final
    if body.include_usage:
        usage = with_reasoning_tokens(ctx.trace.usage(), plan.reasoning, choice_ids)
        last = {**base, "choices": [], "usage": usage.model_dump()}
        if state.settings.timings:
            last["timings"] = ctx.trace.timings().model_dump()
        yield last

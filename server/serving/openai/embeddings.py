"""POST /v1/embeddings: each input is one pooling request in the engine (model/engine/pooling.py), so
embeddings are batched with whatever else runs and never block generation; the vectors are the mean of
the final hidden states over the input's tokens, L2-normalized (why mean: see the pooling module).

Inputs are used as given: no chat template, no BOS or prefix tokens added (the embedding of a text is
the model's reading of that text alone). `dimensions` other than the model's own size is a 400: this
model's vectors were not trained to keep their meaning when truncated.
"""
from __future__ import annotations

import asyncio
import base64
import struct

from starlette.requests import Request
from starlette.responses import Response

from model import SamplingParams
from server.errors import APIError, bad_request
from server.lora import response_model_name
from server.protocol.embeddings import MAX_INPUTS, Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from server.serving.admission import check_model, new_request_id
from server.serving.engine_stream import merge, run_engine, until_disconnected
from server.serving.respond import RequestContext, begin_request, finish_json
from server.state import ServerState

POOLING = "mean"


def encode_base64(vector: list[float]) -> str:
    """OpenAI's base64 format: the float32 values, little-endian, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def prepare_inputs(state: ServerState, body: EmbeddingRequest) -> list[list[int]]:
    inputs = body.inputs()
    if not inputs or len(inputs) > MAX_INPUTS:
        raise bad_request(f"input must hold 1 to {MAX_INPUTS} items, got {len(inputs)}", param="input")
    vocab, limit = state.engine.model_config.vocab_size, state.context_limit
    tokenizer = state.engine.tokenizer
    prompts = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if tokenizer is None:
                raise bad_request("this checkpoint has no tokenizer: send token ids", param="input")
            ids = tokenizer.encode(item)
        else:
            ids = list(item)
            if any(t < 0 or t >= vocab for t in ids):
                raise bad_request(f"token ids must be in [0, {vocab})", param=f"input.{i}", code="invalid_prompt")
        if not ids:
            raise bad_request("an input is empty", param=f"input.{i}", code="invalid_prompt")
        if len(ids) > limit:
            raise APIError(400, f"input {i} has {len(ids)} tokens; this model embeds at most {limit}",
                           param=f"input.{i}", code="context_length_exceeded")
        prompts.append(ids)
    return prompts


async def create_embeddings(state: ServerState, request: Request, body: EmbeddingRequest) -> Response:
    check_model(state, body.model)
    hidden = state.engine.model_config.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise bad_request(f"dimensions={body.dimensions} is not supported: this model's embeddings have {hidden} "
                          "dimensions (truncating them is not meaningful for it); omit `dimensions`",
                          param="dimensions", code="unsupported_parameter")
    prompts = await asyncio.to_thread(prepare_inputs, state, body)  # tokenizing 2048 inputs off the loop
    ctx = begin_request(state, request, new_request_id("embd"), False)
    try:
        vectors = await until_disconnected(request, _embed(state, ctx, prompts))
    finally:
        ctx.close()
    data = [Embedding(index=i, embedding=encode_base64(v) if body.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)]
    tokens = sum(len(p) for p in prompts)
    return finish_json(state, EmbeddingResponse(data=data, model=response_model_name(state),
                                                usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)))


async def _embed(state: ServerState, ctx: RequestContext, prompts: list[list[int]]) -> list[list[float]]:
    params = SamplingParams(max_tokens=0, pooling=POOLING)
    ids = [f"{ctx.request_id}-{i}" for i in range(len(prompts))]
    vectors: dict[str, list[float]] = {}
    async for out in merge([run_engine(state, ctx.ticket, ctx.trace, rid, p, params) for rid, p in zip(ids, prompts)]):
        if out.finished and out.embedding is not None:
            vectors[out.request_id] = out.embedding
    missing = [rid for rid in ids if rid not in vectors]
    if missing:
        raise APIError(500, f"the engine returned no embedding for {len(missing)} input(s)", code="embedding_failed")
    return [vectors[rid] for rid in ids]

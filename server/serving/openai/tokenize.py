"""Prompt token ids without generating: what /tokenize, /v1/messages/count_tokens and token counts of
chat messages share. Chat messages go through the very calls start_chat makes (tool plan, template), so
a count is the prompt_tokens a generation with the same body would report.

    ids = chat_prompt_ids(state, chat_body)
    tokenize(state, TokenizeRequest(...)) / detokenize(state, DetokenizeRequest(...))   # the vLLM routes
"""
from __future__ import annotations

from server.errors import bad_request
from server.protocol import ChatCompletionRequest
from server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.serving.admission import check_model
from server.serving.openai.chat import encode_messages
from server.serving.openai.structured import apply_plan, plan_tools
from server.state import ServerState


def chat_prompt_ids(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    check_model(state, body.model)
    plan = plan_tools(state, body)
    return encode_messages(state, apply_plan(body, plan), plan)


def tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    check_model(state, body.model)
    tokenizer = _tokenizer(state)
    if body.messages is not None:
        chat = ChatCompletionRequest(messages=body.messages, tools=body.tools,
                                     add_generation_prompt=body.add_generation_prompt,
                                     chat_template_kwargs=body.chat_template_kwargs)
        ids = chat_prompt_ids(state, chat)
    else:
        prefix = tokenizer.prefix_token_ids if body.add_special_tokens else []
        ids = [*prefix, *tokenizer.encode(body.prompt or "")]
    strs = [tokenizer.token_to_str(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)


def detokenize(state: ServerState, body: DetokenizeRequest) -> DetokenizeResponse:
    check_model(state, body.model)
    vocab = state.engine.model_config.vocab_size
    if any(t < 0 or t >= vocab for t in body.tokens):
        raise bad_request(f"token ids must be in [0, {vocab})", param="tokens", code="invalid_prompt")
    return DetokenizeResponse(prompt=_tokenizer(state).decode(body.tokens, skip_special_tokens=body.skip_special_tokens))


def _tokenizer(state: ServerState):
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise bad_request("this checkpoint has no tokenizer: only token ids can be served", code="no_tokenizer")
    return tokenizer

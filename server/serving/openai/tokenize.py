"""Prompt token ids without generating: what /tokenize, /v1/messages/count_tokens and token counts of
chat messages share. Chat messages go through the very calls start_chat makes (tool plan, template), so
a count is the prompt_tokens a generation with the same body would report.

    ids = chat_prompt_ids(state, chat_body)
"""
from __future__ import annotations

from server.protocol import ChatCompletionRequest
from server.serving.admission import check_model
from server.serving.openai.chat import encode_messages
from server.serving.openai.structured import apply_plan, plan_tools
from server.state import ServerState


def chat_prompt_ids(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    check_model(state, body.model)
    plan = plan_tools(state, body)
    return encode_messages(state, apply_plan(body, plan), plan)

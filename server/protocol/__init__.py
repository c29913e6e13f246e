"""OpenAI wire schemas. Every request schema owns `to_sampling_params()`.

    from server.protocol import ChatCompletionRequest, CompletionRequest, Usage, ErrorResponse
"""
from server.protocol.chat import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                                  ChatCompletionRequest, ChatMessage, ChoiceLogprobs, ResponseFormat, Tool,
                                  TokenLogprobOut, TopLogprob)
from server.protocol.common import (ErrorInfo, ErrorResponse, ModelCard, ModelList, PromptLogprob, SamplingFields,
                                    StreamOptions, Timings, Usage)
from server.protocol.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest

__all__ = [
    "AssistantMessage", "ChatChoice", "ChatChunkChoice", "ChatCompletion", "ChatCompletionChunk",
    "ChatCompletionRequest", "ChatMessage", "ChoiceLogprobs", "ResponseFormat", "Tool", "TokenLogprobOut",
    "TopLogprob", "ErrorInfo", "ErrorResponse", "ModelCard", "ModelList", "PromptLogprob", "SamplingFields", "StreamOptions",
    "Timings", "Usage", "Completion", "CompletionChoice", "CompletionLogprobs", "CompletionRequest",
]

"""glmserve's model library: the public API for the server, clients of the library and training.

    from model import AsyncEngine, LLMEngine, EngineConfig, SamplingParams, load_model
"""
from model.chat_template import ChatTemplate, ChatTemplateError
from model.config import EngineConfig, ModelConfig, UnsupportedModelError
from model.engine.async_engine import AsyncEngine
from model.engine.llm_engine import LLMEngine
from model.engine.outputs import (EngineDeadError, EngineStats, RequestMetrics, RequestOutput, RequestRejected,
                                  TokenLogprob)
from model.loader import LoadedModel, load_model, resolve_model_dir
from model.sampling_params import SamplingParams, SamplingParamsError
from model.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer

__all__ = [
    "AsyncEngine", "LLMEngine",
    "ChatTemplate", "ChatTemplateError", "EngineConfig", "ModelConfig", "UnsupportedModelError",
    "EngineDeadError", "EngineStats", "RequestMetrics", "RequestOutput", "RequestRejected", "TokenLogprob",
    "LoadedModel", "load_model", "resolve_model_dir", "SamplingParams", "SamplingParamsError",
    "IncrementalDetokenizer", "StopStringMatcher", "Tokenizer",
]

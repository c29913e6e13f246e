"""glmserve's model library: the public API for the server, clients of the library and training.

    from model import AsyncEngine, LLMEngine, EngineConfig, SamplingParams, load_model

Names resolve lazily (PEP 562), so `import model.engine.scheduler` or `from model import SamplingParams`
does not pull in torch: the scheduler and block manager stay torch-free and their tests run in
milliseconds.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncEngine": "model.engine.async_engine",
    "LLMEngine": "model.engine.llm_engine",
    "ChatTemplate": "model.chat_template",
    "ChatTemplateError": "model.chat_template",
    "EngineConfig": "model.config",
    "ModelConfig": "model.config",
    "UnsupportedModelError": "model.config",
    "EngineDeadError": "model.engine.outputs",
    "EngineStats": "model.engine.outputs",
    "RequestMetrics": "model.engine.outputs",
    "RequestOutput": "model.engine.outputs",
    "RequestRejected": "model.engine.outputs",
    "ReasoningGate": "model.engine.thinking",
    "ThinkSpan": "model.engine.thinking",
    "ThinkingBudgetProcessor": "model.engine.thinking",
    "TokenLogprob": "model.engine.outputs",
    "AdapterError": "model.lora.peft_format",
    "AdapterInUse": "model.lora.manager",
    "InsufficientMemoryError": "model.preflight",
    "QuantSpec": "model.quant",
    "describe_quantization": "model.quant",
    "quantize_model": "model.quant",
    "weight_bytes": "model.quant",
    "LoadedModel": "model.loader",
    "load_model": "model.loader",
    "resolve_model_dir": "model.loader",
    "StructuredOutputError": "model.structured",
    "StructuredOutputs": "model.structured",
    "ToolCallShape": "model.structured",
    "ToolTemplate": "model.tool_template",
    "SamplingParams": "model.sampling_params",
    "SamplingParamsError": "model.sampling_params",
    "IncrementalDetokenizer": "model.tokenizer",
    "StopStringMatcher": "model.tokenizer",
    "Tokenizer": "model.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

"""/v1/summarize and /v1/translate on the wire: requests (with to_sampling_params) and responses.

    SummarizeRequest(text="...", max_length=60, length_unit="words", style="bullets", language="en")
    TranslateRequest(text="...", target_lang="en", source_lang="auto", glossary={"模型": "model"}, max_tokens=2048)

`text` may be at most --task-max-input-chars (500,000) characters; `max_tokens` caps the tokens
generated across all of a request's chunks (server/serving/tasks/task_engine.py).

Language codes are checked by the service (server/serving/tasks/langdetect.py) so an unknown code is a 400
naming the field, like every other invalid value.
"""
from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from model import SamplingParams
from server.protocol.common import Timings, Usage

# "length": the request's max_tokens (the cap across chunks) cut the text short; "stop" otherwise
FinishReason = Literal["stop", "length"]
# greedy by default: a summary or a translation should not change from one call to the next
DEFAULT_TEMPERATURE = 0.0


class TaskSamplingFields(BaseModel):
    """The sampling fields a task request may set; n, logprobs and stop make no sense for a task
    whose text the server assembles from several generations."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = None
    stream: bool = False
    temperature: float | None = DEFAULT_TEMPERATURE
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    user: str | None = None
    # the cost cap: tokens generated across every chunk of the request (None: as many as the plan needs)
    max_tokens: int | None = Field(None, ge=1)
    priority: int = 0  # lower is scheduled first, as on chat completions


    def to_sampling_params(self, max_tokens: int, min_tokens: int = 0) -> SamplingParams:
        """Raises SamplingParamsError for out-of-range values (the service turns it into a 400)."""
        optional = dict(top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, repetition_penalty=self.repetition_penalty)
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        return SamplingParams(temperature=temperature, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, seed=self.seed, max_tokens=max_tokens,
                              min_tokens=min(min_tokens, max_tokens), priority=self.priority,
                              **{k: v for k, v in optional.items() if v is not None})


class SummarizeRequest(TaskSamplingFields):
    text: StrictStr
    max_length: int | None = Field(None, ge=1, description="longest summary, in length_unit")
    length_unit: Literal["words", "chars"] | None = Field(
        None, description="words (default) or chars (default for Chinese, Japanese, Korean output: 字数)")
    style: Literal["paragraph", "bullets", "headline"] = "paragraph"
    language: StrictStr | None = Field(None, description="output language code; default: the input's")


class TranslateRequest(TaskSamplingFields):
    text: StrictStr
    source_lang: StrictStr = Field("auto", description="language code of the text, or auto to detect it")
    target_lang: StrictStr
    glossary: dict[StrictStr, StrictStr] | None = Field(None, description="{source term: required translation}")


class Summary(BaseModel):
    id: str
    object: Literal["summary"] = "summary"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    summary: str
    finish_reason: FinishReason = "stop"
    usage: Usage
    num_chunks: int
    timings: Timings | None = None


class Translation(BaseModel):
    id: str
    object: Literal["translation"] = "translation"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    translation: str
    finish_reason: FinishReason = "stop"
    source_lang: str
    target_lang: str
    glossary_unhonored: list[str] = Field(default_factory=list,
                                          description="glossary terms found in the text whose translation "
                                                      "does not appear in the output")
    usage: Usage
    num_chunks: int
    timings: Timings | None = None

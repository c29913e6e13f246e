"""Settings: the one configuration object of the HTTP server.

Every field is a `glmserve serve --flag` (server/__main__.py) and a `GLMSERVE_<FIELD>` environment
variable; a flag given on the command line wins over the environment.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2,
               "mib": 1024 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_size(value: str | int | None) -> int | None:
    """'512MiB', '2GB', '1048576' -> bytes."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"cannot parse size {value!r}; use e.g. 512MiB, 2GiB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLMSERVE_", extra="ignore", protected_namespaces=())

    # what to serve
    model: str = "default"
    served_model_name: str | None = None
    # where
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # engine
    max_model_len: int | None = Field(None, ge=16)
    max_num_seqs: int = Field(32, ge=1)
    max_num_batched_tokens: int = Field(512, ge=1)
    kv_cache_memory: Annotated[int | None, NoDecode] = None  # bytes; None = a fraction of free memory
    dtype: str = "auto"
    device: str = "auto"
    enforce_eager: bool = False
    num_threads: int | None = Field(None, ge=1)  # torch threads for the engine (default: torch's choice)
    speculative_tokens: int = Field(0, ge=0, le=16)  # n-gram drafts per step; 0 = off
    cache_dir: str | None = None  # where dequantized GGUF weights are cached (default ~/.cache/glmserve)
    # how `<think>` reasoning is told apart from the answer; auto reads the chat template (and logs it)
    reasoning_parser: Literal["auto", "none", "glm45", "deepseek_r1", "qwen3"] = "auto"
    # admission
    max_queue: int = Field(256, ge=1)  # requests admitted but not yet producing tokens
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # hostile and slow clients (docs/SECURITY.md, "Slow and stalled clients")
    write_stall_timeout: float = Field(30.0, ge=0)  # a response send blocked this long cuts the request; 0 = off
    header_timeout: float = Field(10.0, gt=0)  # seconds a connection may take to send a request's headers
    task_max_concurrent_chunks: int = Field(2, ge=1)  # engine requests one summarize/translate runs at once
    task_max_input_chars: int = Field(500_000, ge=1)  # the longest `text` /v1/summarize and /v1/translate take
    # security
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key_file: str | None = None
    metrics_auth: bool = False  # require an API key on /metrics too
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: no CORS headers at all
    # behaviour
    drain_timeout: float = Field(30.0, ge=0)
    timings: bool = True  # the `timings` object on responses and final chunks
    self_test: Literal["off", "report", "require"] = "report"
    sse_ping_interval: float = Field(15.0, ge=0)
    log_prompts: bool = False
    log_level: str = "info"
    web_dir: str | None = None  # None = clients/web next to the package, when present

    @field_validator("api_key", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # GLMSERVE_API_KEY="k1,k2" names several keys (GLMSERVE_CORS_ORIGINS several origins);
        # a flag repeated gives a list already.
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("kv_cache_memory", mode="before")
    @classmethod
    def _parse_kv_size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, (str, int)) or value is None else value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.api_key_file and not os.path.isfile(self.api_key_file):
            raise ValueError(f"api_key_file {self.api_key_file!r} does not exist")
        return self

    @property
    def model_name(self) -> str:
        """The id clients send as `model` and /v1/models lists."""
        if self.served_model_name:
            return self.served_model_name
        if self.model == "default":
            return "default"
        base = os.path.basename(os.path.normpath(self.model))
        return base[:-5] if base.endswith(".gguf") else base

    def accepted_model_names(self) -> set[str]:
        return {self.model_name, self.model}

    def all_api_keys(self) -> list[str]:
        """Keys from --api-key plus one per non-empty, non-comment line of --api-key-file."""
        keys = list(self.api_key)
        if self.api_key_file:
            with open(self.api_key_file) as f:
                keys += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        return keys

    def resolved_web_dir(self) -> str | None:
        if self.web_dir is not None:
            return self.web_dir if os.path.isdir(self.web_dir) else None
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "web")
        return here if os.path.isdir(here) else None

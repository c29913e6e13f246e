"""Settings: the one configuration object of the HTTP server.

Every field is a `glmserve serve --flag` (server/__main__.py builds the parser from these fields) and a
`GLMSERVE_<FIELD>` environment variable; a flag given on the command line wins over the environment.
The engine's knobs are not written here: they are EngineConfig's fields (model/config.py), added to
Settings by name, so a new EngineConfig field is a flag and a variable at once.
"""
from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import Field, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model import EngineConfig

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


def flag(default: Any, help: str | None = None, *, name: str | None = None, **constraints: Any) -> Any:
    """A Settings field that is a `glmserve serve` flag (server/__main__.py derives the parser from these):
    `help` is its help text, `name` a flag spelling other than --field-name."""
    extra = {"flag": name} if name else None
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class ServerSettings(BaseSettings):
    """The HTTP server's own knobs. The engine's (EngineConfig) join them in Settings below."""

    model_config = SettingsConfigDict(env_prefix="GLMSERVE_", extra="ignore", protected_namespaces=())

    # what to serve
    model: str = flag("default", "'default', an HF checkpoint dir or a .gguf file")
    served_model_name: str | None = flag(None, "the id clients send as `model` (default: from --model)")
    # where
    host: str = flag("127.0.0.1", "address to listen on")
    port: int = flag(8000, "port to listen on", ge=0, le=65535)
    cache_dir: str | None = flag(None, "cache for dequantized GGUF weights (default: ~/.cache/glmserve)")
    # how `<think>` reasoning is told apart from the answer; auto reads the chat template (and logs it)
    reasoning_parser: Literal["auto", "none", "glm45", "deepseek_r1", "qwen3"] = flag(
        "auto", "split <think> reasoning into reasoning_content (auto: from the chat template)")
    # admission
    max_queue: int = flag(256, "admitted requests without output yet; beyond: 429", ge=1)
    max_request_bytes: int = flag(4 * 1024 * 1024, "request body limit in bytes; beyond: 413", ge=1024)
    # hostile and slow clients (docs/SECURITY.md, "Slow and stalled clients")
    write_stall_timeout: float = flag(30.0, "cut a response whose client has not read for this many seconds "
                                            "(0: never)", ge=0)
    header_timeout: float = flag(10.0, "close a connection that has not sent a request's headers within this "
                                       "many seconds", gt=0)
    body_timeout: float = flag(60.0, "answer 408 and close the connection when a request body has not fully "
                                     "arrived this many seconds after its headers", gt=0)
    task_max_concurrent_chunks: int | None = flag(
        None, "engine requests one /v1/summarize or /v1/translate request runs at once (default: a quarter of "
              "--max-num-seqs, at least 1)", ge=1)
    task_priority_offset: int = flag(1, "priority levels a /v1/summarize or /v1/translate chunk runs below its "
                                        "request's priority (0: the same)", ge=0)
    task_max_input_chars: int = flag(500_000, "longest text /v1/summarize and /v1/translate accept (characters)",
                                     ge=1)
    # security
    api_key: Annotated[list[str], NoDecode] = flag([], "accepted Bearer key; repeat for several")
    api_key_file: str | None = flag(None, "file with one accepted key per line")
    metrics_auth: bool = flag(False, "require an API key on /metrics too")
    admin_key: Annotated[list[str], NoDecode] = flag(
        [], "key that may load and unload LoRA adapters at run time (repeat for several; needed once API keys "
            "are set)")
    # LoRA adapters beside the base (server/lora.py); `model: NAME` picks one
    lora: Annotated[list[str], NoDecode] = flag([], "a PEFT LoRA adapter NAME=DIR served beside the base "
                                                    "(repeat for several)")
    enable_lora_runtime_updates: bool = flag(False, "POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    lora_allowed_root: str | None = flag(None, "adapter directories must lie under this directory")
    cors_origins: Annotated[list[str], NoDecode] = flag(
        [], "allow browser calls from this origin (repeat for several); default: CORS off", name="--cors-origin")
    # behaviour
    drain_timeout: float = flag(30.0, "seconds running requests get after SIGTERM", ge=0)
    timings: bool = flag(True, "the `timings` object on responses (--no-timings: off)")
    self_test: Literal["off", "report", "require"] = flag("report", "start-up self-test mode")
    sse_ping_interval: float = flag(15.0, "seconds between SSE keep-alive comments", ge=0)
    log_prompts: bool = flag(False, "include prompt text in request log lines")
    log_level: str = flag("info", "log level")
    web_dir: str | None = flag(None, "static web page directory served at / (default: clients/web)")

    @field_validator("api_key", "cors_origins", "admin_key", "lora", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # GLMSERVE_API_KEY="k1,k2" names several keys (GLMSERVE_CORS_ORIGINS several origins);
        # a flag repeated gives a list already.
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> "ServerSettings":
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
        # an admin key (LoRA updates, server/lora.py) is also an API key, once the API has keys at all
        return keys + [k for k in self.admin_key if k not in keys] if keys else keys

    def resolved_web_dir(self) -> str | None:
        if self.web_dir is not None:
            return self.web_dir if os.path.isdir(self.web_dir) else None
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "web")
        return here if os.path.isdir(here) else None


def _engine_fields() -> dict[str, Any]:
    """EngineConfig's fields as Settings fields: same names, types, defaults and help."""
    hints = get_type_hints(EngineConfig)
    out: dict[str, Any] = {}
    for f in fields(EngineConfig):
        annotation = Annotated[hints[f.name], NoDecode] if f.metadata.get("size") else hints[f.name]
        extra = {"aliases": list(f.metadata["aliases"]), "size": bool(f.metadata.get("size"))}
        out[f.name] = (annotation, Field(f.default, description=f.metadata.get("help"), json_schema_extra=extra))
    return out


class _EngineKnobs(ServerSettings):
    @field_validator(*[f.name for f in fields(EngineConfig) if f.metadata.get("size")], mode="before",
                     check_fields=False)
    @classmethod
    def _parse_size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, (str, int)) or value is None else value

    @model_validator(mode="after")
    def _check_engine(self) -> "_EngineKnobs":
        self.engine_config()  # EngineConfig validates its own fields; a ValueError is a ValidationError here
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})


# Settings = the server's knobs + every EngineConfig field (GLMSERVE_MAX_NUM_SEQS, --max-num-seqs, ...)
Settings = create_model("Settings", __base__=_EngineKnobs, __module__=__name__, **_engine_fields())
Settings.__doc__ = "The one configuration object of the HTTP server: ServerSettings + EngineConfig's fields."

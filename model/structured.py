"""Grammar-constrained decoding: JSON schemas and tool-call shapes compiled once per tokenizer with xgrammar.

    outputs = StructuredOutputs.for_tokenizer(engine.tokenizer, engine.model_config.vocab_size)
    grammar = outputs.json_schema({"type": "object", ...})           # cached per schema
    params = SamplingParams(..., logits_processors=(outputs.processor(grammar, n=1),))

A grammar is compiled against the tokenizer's vocabulary once and cached (keyed by the canonical JSON of
its spec), so repeated schemas cost a dictionary lookup. The per-sequence work (advance a matcher, fill a
token bitmask, mask the logits row) lives in model/engine/guided.py.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from model.tokenizer import Tokenizer

MAX_CACHED_GRAMMARS = 256
MAX_SCHEMA_CHARS = 64_000  # bigger schemas are refused: compiling them could stall the server
_XGRAMMAR_LOG_PREFIX = re.compile(r"\[[0-9:]+\] \S+:\d+: ")  # "[15:45:18] /project/cpp/x.cc:5082: "


class StructuredOutputError(ValueError):
    """The schema or grammar cannot be compiled (the server answers 400 naming `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCallShape:
    """The exact text of one call of one tool: `begin` + arguments + `end`.

    `syntax` says how arguments are written: "json" (a JSON object valid for `parameters`),
    "python_kwargs" (ChatGLM3's `tool_call(a=1, b="x")` body: the schema's required keys in order, each
    value a JSON literal valid for its property) or "glm_xml" (GLM-4.5+'s
    `<arg_key>k</arg_key>` `separator` `<arg_value>v</arg_value>` `separator` pairs over the same keys,
    string values raw, others JSON)."""

    name: str
    begin: str
    parameters: dict[str, Any]
    end: str = ""
    syntax: Literal["json", "python_kwargs", "glm_xml"] = "json"
    separator: str = ""


class StructuredOutputs:
    """Compiles and caches grammars for one tokenizer; hands out per-sequence logits processors."""

    _instances: dict[tuple[int, int], "StructuredOutputs"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_threads: int = 2) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(tokenizer.eos_token_ids)
        # vocab_size is the logits width (padded embeddings included): padding ids are masked too
        info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=vocab_size,
                                                  stop_token_ids=list(self.stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        self._allowed = _without_control_characters(info, vocab_size)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, vocab_size: int) -> "StructuredOutputs":
        """One instance per (tokenizer, vocab size): building the vocabulary tables takes ~0.5 s."""
        key = (id(tokenizer), vocab_size)
        with cls._instances_lock:
            inst = cls._instances.get(key)
            if inst is None:
                inst = cls._instances[key] = cls(tokenizer, vocab_size)
            return inst

    # ---- grammars ------------------------------------------------------------------------------------
    def json_object(self) -> Any:
        """Any JSON object (response_format json_object)."""
        return self.json_schema({"type": "object"}, strict=False)

    def json_schema(self, schema: dict[str, Any], strict: bool = True, param: str = "response_format") -> Any:
        """A JSON value valid for `schema`; strict forbids properties the schema does not list."""
        spec = {"kind": "json_schema", "schema": schema, "strict": strict}
        return self._cached(spec, param, lambda: self._json_grammar(schema, strict))

    def tool_calls(self, shapes: list[ToolCallShape], param: str = "tool_choice") -> Any:
        """Exactly one call of one of `shapes` (tool_choice required, or a named function)."""
        if not shapes:
            raise StructuredOutputError(param, "no tool to call")
        spec = {"kind": "tool_calls", "shapes": [vars(s) for s in shapes]}
        return self._cached(spec, param, lambda: self._xgr.Grammar.union(*[self._shape_grammar(s) for s in shapes]))

    def processor(self, compiled: Any, n: int = 1) -> Any:
        """A fresh logits processor for one request (its n choices share it; see guided.py)."""
        from model.engine.guided import GrammarLogitsProcessor

        return GrammarLogitsProcessor(compiled, self.stop_token_ids, self.vocab_size, num_choices=n,
                                      allowed=self._allowed)

    def compile_any_of(self, parts: list[tuple[str, Any]], param: str = "response_format") -> Any:
        """Union of several specs: ("json_schema", (schema, strict)) and ("tool_calls", shapes) items.
        Used when tools are offered with tool_choice auto and a response_format is also set."""
        spec = {"kind": "any_of", "parts": [[k, v if k != "tool_calls" else [vars(s) for s in v]] for k, v in parts]}

        def build() -> Any:
            grammars = []
            for kind, value in parts:
                if kind == "json_schema":
                    grammars.append(self._json_grammar(*value))
                else:
                    grammars += [self._shape_grammar(s) for s in value]
            return self._xgr.Grammar.union(*grammars)

        return self._cached(spec, param, build)

    # ---- internals -----------------------------------------------------------------------------------
    def _cached(self, spec: dict[str, Any], param: str, build: Any) -> Any:
        key = json.dumps(spec, sort_keys=True, ensure_ascii=False)
        if len(key) > MAX_SCHEMA_CHARS:
            raise StructuredOutputError(param, f"schema too large ({len(key)} > {MAX_SCHEMA_CHARS} characters)")
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            compiled = self._compiler.compile_grammar(build())
        except StructuredOutputError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses for unsupported schemas
            reason = _XGRAMMAR_LOG_PREFIX.sub("", str(e)).strip()
            raise StructuredOutputError(param, f"cannot compile the schema into a grammar: {reason}") from e
        if self._xgr.GrammarMatcher(compiled).is_completed():
            # a grammar that accepts only the empty string (e.g. "anyOf": []): no JSON can satisfy it
            raise StructuredOutputError(param, "the schema admits no value")
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return compiled

    def _json_grammar(self, schema: dict[str, Any], strict: bool) -> Any:
        if not isinstance(schema, dict):
            raise StructuredOutputError("response_format", "the JSON schema must be an object")
        # any_whitespace=False: a small model left free to emit whitespace can loop on it forever
        return self._xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=strict)

    def _shape_grammar(self, shape: ToolCallShape) -> Any:
        xgr = self._xgr
        if shape.syntax == "python_kwargs":
            args = _python_kwargs_grammar(xgr, shape.parameters, self._json_grammar)
        elif shape.syntax == "glm_xml":
            args = _glm_xml_grammar(xgr, shape.parameters, shape.separator, self._json_grammar)
        else:
            args = self._json_grammar(shape.parameters or {"type": "object"}, strict=True)
        parts = [_literal(xgr, shape.begin), args] + ([_literal(xgr, shape.end)] if shape.end else [])
        return xgr.Grammar.concat(*[p for p in parts if p is not None])


def _without_control_characters(info: Any, vocab_size: int) -> Any:
    """A token bitmask (1, ceil(V / 32)) int32 clearing every token that holds a control character other
    than "\n". xgrammar 0.2 writes a length-bounded JSON string as `[^"\\\r\n]{m,n}`, which lets raw
    U+0000..U+001F through, and no JSON parser accepts those; no format here needs one outside its
    literal newlines. Special tokens (the stop tokens among them) stay allowed."""
    import torch

    special = set(info.special_token_ids) | set(info.stop_token_ids)
    allowed = torch.ones(-(-vocab_size // 32) * 32, dtype=torch.int64)
    for token_id, text in enumerate(info.decoded_vocab[:vocab_size]):
        if token_id not in special and any(b < 0x20 and b != 0x0A for b in text):
            allowed[token_id] = 0
    words = (allowed.view(-1, 32) << torch.arange(32)).sum(dim=1)  # bit i of word w = token 32 w + i
    return ((words + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32).unsqueeze(0)  # wrap into int32


def _literal(xgr: Any, text: str) -> Any:
    """A grammar matching exactly `text` (json.dumps gives the EBNF string escapes xgrammar reads)."""
    if not text:
        return None
    return xgr.Grammar.from_ebnf("root ::= " + json.dumps(text, ensure_ascii=False))


def _python_kwargs_grammar(xgr: Any, parameters: dict[str, Any], json_grammar: Any) -> Any:
    """`tool_call(k1=v1, k2=v2)` over the schema's required properties (all of them when none is
    required), each value a JSON literal valid for the property's own schema."""
    props, names = _argument_names(parameters)
    parts = [_literal(xgr, "tool_call(")]
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise StructuredOutputError("tools", f"parameter {name!r} is not a Python identifier (ChatGLM3 format)")
        parts.append(_literal(xgr, (", " if i else "") + name + "="))
        parts.append(json_grammar(props[name] or {}, True))
    parts.append(_literal(xgr, ")"))
    return xgr.Grammar.concat(*parts)


def _argument_names(parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(properties, the names a forced call writes): the required ones in order, or all when none is."""
    props: dict[str, Any] = (parameters or {}).get("properties") or {}
    return props, [n for n in (parameters or {}).get("required") or list(props) if n in props]


def _glm_xml_grammar(xgr: Any, parameters: dict[str, Any], separator: str, json_grammar: Any) -> Any:
    """GLM-4.5+ arguments: per property `<arg_key>name</arg_key>` sep `<arg_value>value</arg_value>` sep.
    A string value is raw text (no `<`, so it cannot run into the closing tag; maxLength and enum kept);
    any other value is JSON valid for the property's schema."""
    props, names = _argument_names(parameters)
    parts = []
    for name in names:
        if "<" in name or ">" in name:
            raise StructuredOutputError("tools", f"parameter {name!r} cannot be written as a GLM <arg_key>")
        parts.append(_literal(xgr, f"<arg_key>{name}</arg_key>{separator}<arg_value>"))
        parts.append(_raw_string_grammar(xgr, props[name]) if _is_raw_string(props[name])
                     else json_grammar(props[name] or {}, True))
        parts.append(_literal(xgr, f"</arg_value>{separator}"))
    return xgr.Grammar.concat(*parts) if parts else None


def _is_raw_string(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "string" or (
        "type" not in schema and bool(schema.get("enum")) and all(isinstance(v, str) for v in schema["enum"])))


def _raw_string_grammar(xgr: Any, schema: dict[str, Any]) -> Any:
    if schema.get("enum"):
        options = " | ".join(json.dumps(str(v), ensure_ascii=False) for v in schema["enum"])
        return xgr.Grammar.from_ebnf(f"root ::= {options}")
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    repeat = f"{{{low},{int(high)}}}" if high is not None else (f"{{{low},}}" if low else "*")
    # surrogate code points are excluded: xgrammar's negated class admits them, and their UTF-8 bytes
    # are invalid (they decode to U+FFFD, so the text would change length)
    return xgr.Grammar.from_ebnf(f"root ::= [^<\\uD800-\\uDFFF]{repeat}")

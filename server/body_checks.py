"""Request-body checks made before any JSON parser sees the body (the middleware answers a failed one
with a 400). Every check is a few passes of C-speed bytes operations, so its time is bounded by the
body size (a few ms per MB), whatever the body holds; nothing here parses the JSON.

- Encoding: Python's json.loads(bytes) decodes with 'surrogatepass', so raw UTF-8 surrogate bytes
  (ED A0 80) became lone surrogates that the tokenizer failed on (a 500); overlong forms, 0xFF and
  truncated sequences were a 400 with a null `code`. Now every such body is `invalid_encoding`.
- Size of the structure: json.loads and pydantic cost time per container and per value on the event
  loop (800k nested `[[]]` in 4 MB took 0.66 s to parse, and walking it several seconds), so a body
  may hold at most MAX_JSON_CONTAINERS objects/arrays, MAX_JSON_VALUES array items or object members
  and MAX_JSON_STRINGS strings. A body within those limits parses in tens of milliseconds.
- Nesting: code that walks a value recursively (tool schemas, tool-call arguments, templates) hit
  RecursionError at a few hundred levels; no request of the API needs more than MAX_JSON_DEPTH.
- An unpaired \\uD800-\\uDFFF escape is valid JSON but decodes to a lone surrogate, which is not
  Unicode (the same 500 as the raw bytes).
"""
from __future__ import annotations

import itertools
import json
import re

MAX_JSON_DEPTH = 64
# 10,000 chat messages are 10,001 containers and must reach the route (it answers with the token count)
MAX_JSON_CONTAINERS = 25_000
# A token-id prompt of 128k tokens fits. pydantic validates completions' `prompt` union at ~1.3 us per
# item (and FastAPI does it on the event loop), so this bounds that stall to ~0.2 s.
MAX_JSON_VALUES = 131_072
MAX_JSON_STRINGS = 131_072

_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
# a high surrogate escape not followed by a low one, or a low one not preceded by a high one
_LONE_SURROGATE = re.compile(_HIGH + rb"(?!" + _LOW + rb")|(?<!" + _HIGH + rb")" + _LOW)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_body_problem(body: bytes) -> tuple[str, str] | None:
    """(error code, message) when the body must be refused; None when fine or not JSON at all
    (the app's own parser answers malformed JSON)."""
    utf8, problem = _as_utf8(body)
    if problem is not None:
        return problem
    if utf8.count(b'"') > 2 * MAX_JSON_STRINGS:
        return "too_many_json_values", f"the request body holds more than {MAX_JSON_STRINGS} strings"
    # Escaped backslashes and quotes become placeholders of the same length: afterwards every `"` opens
    # or closes a string, and no escape can pair with a neighbour it was not next to.
    masked = utf8.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    structure = b"".join(masked.split(b'"')[0::2])  # the bytes outside strings
    num_containers = structure.count(b"[") + structure.count(b"{")
    if num_containers > MAX_JSON_CONTAINERS:
        return "too_many_json_values", (f"the request body holds {num_containers} JSON objects and arrays; "
                                        f"at most {MAX_JSON_CONTAINERS} are accepted")
    num_values = structure.count(b",")
    if num_values > MAX_JSON_VALUES:
        return "too_many_json_values", (f"the request body holds {num_values} array items or object members; "
                                        f"at most {MAX_JSON_VALUES} are accepted")
    if num_containers > MAX_JSON_DEPTH and _max_depth(structure) > MAX_JSON_DEPTH:
        return "nesting_too_deep", f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels"
    if b"\\u" in masked and _LONE_SURROGATE.search(masked) is not None:
        return "invalid_unicode", ("the request body contains an unpaired surrogate escape (\\uD800-\\uDFFF): "
                                   "strings must be valid Unicode")
    return None


def _as_utf8(body: bytes) -> tuple[bytes, tuple[str, str] | None]:
    """The body as strict UTF-8 (UTF-16/32 JSON, which json.loads accepts, is transcoded)."""
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)  # strict: no surrogates, overlongs or truncated sequences
    except UnicodeDecodeError as e:
        return b"", ("invalid_encoding", f"the request body is not valid {encoding.upper()}: {e.reason} at byte "
                     f"{e.start} (JSON must be UTF-8)")
    return (body if encoding == "utf-8" else text.encode("utf-8")), None


def _max_depth(structure: bytes) -> int:
    brackets = structure.translate(None, _NOT_BRACKETS)  # at most 2 * MAX_JSON_CONTAINERS bytes
    return max(itertools.accumulate(_DEPTH_STEP[b] for b in brackets))

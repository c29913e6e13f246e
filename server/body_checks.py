"""Request-body checks the JSON parser lets through (the middleware answers a failed one with a 400).

- An unpaired \\uD800-\\uDFFF escape is valid JSON but decodes to a lone surrogate, which is not
  Unicode: the tokenizer raised TypeError on it and the UTF-8 encoder of an error message quoting it
  raised UnicodeEncodeError, so such requests were 500s.
- Nesting: Python's parser accepts ~1000 levels, but code that walks a value recursively (tool schemas,
  tool-call arguments, templates) hit RecursionError (a 500) at a few hundred. No request of the API
  needs more than MAX_JSON_DEPTH levels.

Both checks cost one byte scan for ordinary bodies; only a suspicious one is parsed a second time.
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 64
# the only way a lone surrogate gets into parsed JSON is through one of these escapes
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def json_body_problem(body: bytes) -> tuple[str, str] | None:
    """(error code, message) when the body must be refused; None when fine or not JSON at all
    (the app's own parser answers malformed JSON)."""
    surrogates = _SURROGATE_ESCAPE.search(body) is not None
    deep = body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH  # fewer brackets cannot nest deeper
    if not (surrogates or deep):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if deep and _depth_exceeds(data, MAX_JSON_DEPTH):
        return "nesting_too_deep", f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels"
    if surrogates and _has_lone_surrogate(data):
        return "invalid_unicode", ("the request body contains an unpaired surrogate escape (\\uD800-\\uDFFF): "
                                   "strings must be valid Unicode")
    return None


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]  # iterative: the point is not to recurse
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False

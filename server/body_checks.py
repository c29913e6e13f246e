"""Request-body checks the JSON parser lets through.

An unpaired \\uD800-\\uDFFF escape is valid JSON but decodes to a lone surrogate, which is not Unicode:
the tokenizer raises TypeError on it and the UTF-8 encoder of an error message that quotes it raises
UnicodeEncodeError, so such requests were 500s. The middleware answers them with a 400 instead.
"""
from __future__ import annotations

import json
import re

# the only way a lone surrogate gets into parsed JSON is through one of these escapes
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def has_lone_surrogate(body: bytes) -> bool:
    """True when the JSON body decodes to a string that is not valid Unicode. Bodies without a
    surrogate escape (nearly all) cost one regex scan; invalid JSON is left to the app's parser."""
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # before ValueError, its base class
        return True
    except (ValueError, RecursionError):
        return False
    return False

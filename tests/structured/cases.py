"""Twenty small prompts and JSON schemas for the live json_schema test: strings carry maxLength and numbers
bounds, so a 135M model finishes each well inside max_tokens."""
from __future__ import annotations

from typing import Any


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


S = {"type": "string", "maxLength": 16}
INT = {"type": "integer", "minimum": 0, "maximum": 999}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("Describe a cat with a name and an age.", _obj({"name": S, "age": INT})),
    ("Give a city and its country.", _obj({"city": S, "country": S})),
    ("Is the sky blue? Answer with a boolean field.", _obj({"answer": {"type": "boolean"}})),
    ("Pick a primary color.", _obj({"color": {"type": "string", "enum": ["red", "yellow", "blue"]}})),
    ("Rate this movie from 1 to 5.", _obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("List two fruits.", _obj({"fruits": {"type": "array", "items": S, "minItems": 2, "maxItems": 2}})),
    ("Give the temperature in Paris as a number.", _obj({"celsius": {"type": "number", "minimum": -50, "maximum": 60}})),
    ("Create a user with a name, an email and an admin flag.",
     _obj({"name": S, "email": {"type": "string", "maxLength": 24}, "admin": {"type": "boolean"}})),
    ("Describe a book: title and author.", _obj({"book": _obj({"title": S, "author": S})})),
    ("What is 2 + 2?", _obj({"result": INT})),
    ("Classify the sentiment of 'I love it'.",
     _obj({"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}, "confidence":
           {"type": "number", "minimum": 0, "maximum": 1}})),
    ("Translate 'hello' into French.", _obj({"source": S, "french": S})),
    ("Give a point with x and y coordinates.", _obj({"x": INT, "y": INT})),
    ("Name a planet and say whether it has rings.", _obj({"planet": S, "rings": {"type": "boolean"}})),
    ("Suggest up to three tags for a blog post about cooking.",
     _obj({"tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}})),
    ("Give a date as year, month and day.",
     _obj({"year": {"type": "integer", "minimum": 1900, "maximum": 2100},
           "month": {"type": "integer", "minimum": 1, "maximum": 12}, "day": {"type": "integer", "minimum": 1,
                                                                              "maximum": 31}})),
    ("Return a status that is either ok or error, with an optional message.",
     _obj({"status": {"type": "string", "enum": ["ok", "error"]}, "message": S}, ["status"])),
    ("Give a product with a price.", _obj({"product": S, "price": {"type": "number", "minimum": 0, "maximum": 1000}})),
    ("Answer with a single word.", {"type": "string", "maxLength": 12}),
    ("Give a list of two numbers.", {"type": "array", "items": INT, "minItems": 2, "maxItems": 2}),
]

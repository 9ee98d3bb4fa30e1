"""OpenAI's ``response_format`` as a grammar for ``Constraint``.

    {"type": "text"}                                                   -> None (free text)
    {"type": "json_object"}                                            -> any JSON object
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}
                                                                       -> JSON valid under that schema

The JSON is written compactly (``", "`` between items, ``": "`` after keys, no other whitespace): a grammar that
allowed free whitespace would let a small model pad forever. Errors name the field and say what to give.
"""

from __future__ import annotations

import json

from prompttune.core.errors import DataError

MAX_SCHEMA_CHARS = 32_000  # a schema's JSON text at most: its grammar is built per request
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TYPES = ("text", "json_object", "json_schema")


def grammar_for(response_format) -> str | None:
    """The grammar (llguidance's JSON form) of an OpenAI ``response_format``; None for free text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in TYPES:
        raise DataError(
            f"response_format: give an object whose 'type' is one of {', '.join(TYPES)} (got {response_format!r:.80})."
        )
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _from_schema({"type": "object"})
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise DataError(
            "response_format.json_schema.schema: give the JSON schema as an object, e.g. "
            '{"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", ...}}}.'
        )
    return _from_schema(spec["schema"])


def _from_schema(schema: dict) -> str:
    from llguidance import LLMatcher

    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise DataError(
            f"response_format.json_schema.schema: {len(text):,} characters of JSON; at most {MAX_SCHEMA_CHARS:,}."
        )
    try:
        grammar = LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise DataError(f"response_format.json_schema.schema: {e}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise DataError(f"response_format.json_schema.schema: not a schema this server can hold output to: {error}")
    return grammar

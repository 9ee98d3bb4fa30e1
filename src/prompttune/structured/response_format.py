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
from prompttune.structured.grammar import checked

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


def grammar_from_file(path) -> str:
    """The grammar of a JSON schema in a file (``prompttune generate --json-schema FILE``)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(f'--json-schema {path}: no such file; give a JSON schema file, e.g. {{"type": "object"}}.')
    if path.stat().st_size > MAX_SCHEMA_CHARS * 4:
        raise DataError(
            f"--json-schema {path}: {path.stat().st_size:,} bytes; a schema is at most {MAX_SCHEMA_CHARS:,} characters."
        )
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DataError(f"--json-schema {path}{where}: not JSON ({e}); give a JSON schema object.") from None
    if not isinstance(schema, dict):
        raise DataError(f"--json-schema {path}: the schema must be a JSON object, not {type(schema).__name__}.")
    try:
        return _from_schema(schema)
    except DataError as e:
        raise DataError(str(e).replace("response_format.json_schema.schema", f"--json-schema {path}", 1)) from None


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
    return checked("response_format.json_schema.schema: not a schema this server can hold output to", grammar)

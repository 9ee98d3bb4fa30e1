"""vLLM's structured-output fields, for clients written against vLLM's OpenAI-compatible server:

    "guided_choice": ["positive", "negative"]     the completion is exactly one of these strings
    "guided_regex": "[0-9]{1,3}"                  the completion matches this regular expression
    "guided_json": {...JSON schema...}            as response_format json_schema
    "guided_grammar": "start: ..."                the completion is a sentence of this Lark grammar
                                                  (llguidance's dialect: vLLM's ``guidance`` backend's)

At most one of them, and not with ``response_format`` (an error names both). Outside OpenAI's schema, as
``num_beams`` is: the ``openai`` client sends them with ``extra_body``.
"""

from __future__ import annotations

import json

from prompttune.core.errors import DataError
from prompttune.structured.grammar import checked, lark_grammar
from prompttune.structured.response_format import grammar_for

GUIDED = ("guided_choice", "guided_regex", "guided_json", "guided_grammar")
MAX_CHOICES, MAX_CHOICE_CHARS, MAX_REGEX_CHARS, MAX_GRAMMAR_CHARS = 256, 500, 4000, 32_000


def request_grammar(body: dict) -> str | None:
    """The grammar a completion request asks for (``response_format`` or one ``guided_*`` field), or None."""
    given = [k for k in ("response_format", *GUIDED) if body.get(k) is not None]
    if len(given) > 1:
        raise DataError(f"{' and '.join(given)}: give at most one way to hold the output.")
    if not given or given[0] == "response_format":
        return grammar_for(body.get("response_format"))
    key, value = given[0], body[given[0]]
    if key == "guided_json":
        if not isinstance(value, dict):
            raise DataError("guided_json: give a JSON schema object.")
        return grammar_for({"type": "json_schema", "json_schema": {"schema": value}})
    if key == "guided_choice":
        ok = isinstance(value, list) and 0 < len(value) <= MAX_CHOICES
        if not ok or not all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_CHARS for c in value):
            raise DataError(
                f"guided_choice: give 1 to {MAX_CHOICES} non-empty strings of at most {MAX_CHOICE_CHARS} characters."
            )
        lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(value)) + "\n"
        return lark_grammar(lark, key)
    if key == "guided_grammar":
        if not isinstance(value, str) or not 0 < len(value) <= MAX_GRAMMAR_CHARS:
            raise DataError(f"guided_grammar: give a Lark grammar of 1 to {MAX_GRAMMAR_CHARS:,} characters.")
        return lark_grammar(value, key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REGEX_CHARS:
        raise DataError(f"guided_regex: give a regular expression of 1 to {MAX_REGEX_CHARS:,} characters.")
    from llguidance import LLMatcher

    return checked(key, LLMatcher.grammar_from_regex(value))

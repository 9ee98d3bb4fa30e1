"""Structured output: completions held to a JSON schema (or any JSON object) token by token.

    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "a", "schema": {...}}})
    text = Generator(backbone).generate(ids, config=GenerationConfig(grammar=grammar))   # parses

``response_format.py`` turns OpenAI's ``response_format`` into a grammar (checked and bounded), ``guided.py``
vLLM's ``guided_choice`` / ``guided_regex`` / ``guided_json`` fields; ``constraint.py`` holds one completion to a
grammar while it decodes (``Constraint``: a mask of the tokens the grammar allows next). The grammar engine is
llguidance (the Rust library behind Guidance, and one of vLLM's structured-output backends).
"""

from prompttune.structured.constraint import Constraint, constrained_pick
from prompttune.structured.guided import GUIDED, request_grammar
from prompttune.structured.response_format import MAX_SCHEMA_CHARS, grammar_for, grammar_from_file

__all__ = [
    "GUIDED",
    "MAX_SCHEMA_CHARS",
    "Constraint",
    "constrained_pick",
    "grammar_for",
    "grammar_from_file",
    "request_grammar",
]

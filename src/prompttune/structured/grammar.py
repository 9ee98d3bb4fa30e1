"""llguidance grammars checked once: an invalid one is an error naming what it came from."""

from __future__ import annotations

import functools

from prompttune.core.errors import DataError


def checked(what: str, grammar: str) -> str:
    """``grammar`` (llguidance's form) if it is valid; else a DataError starting with ``what``."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise DataError(f"{what}: {error}")
    return grammar


@functools.lru_cache(maxsize=64)
def lark_grammar(text: str, what: str = "grammar") -> str:
    """The checked grammar of a Lark text (a program step's reply form, ``guided_choice``), built once per text."""
    from llguidance import LLMatcher

    return checked(what, LLMatcher.grammar_from_lark(text))

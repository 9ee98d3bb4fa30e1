"""``--method-option KEY=VALUE`` flags: typed settings of the chosen method's config.

Each method's config dataclass is the list of what may be set; a value is converted to its field's type
(int, float, bool, text, or none for optional fields), with an error naming the flag when it does not fit.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import fields

from prompttune.core.errors import PromptTuneError
from prompttune.methods import METHODS

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def method_class(method: str):
    if method not in METHODS:
        raise PromptTuneError(f"--method {method}: unknown method; choose one of {', '.join(sorted(METHODS))}.")
    return METHODS[method]


def config_fields(method: str) -> dict[str, type]:
    """The settable names of a method's config and their types."""
    cls = method_class(method).config_class
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_method_options(method: str, options: list[str] | None) -> dict:
    """['prefix_hidden=256', 'encoder=lstm'] -> {'prefix_hidden': 256, 'encoder': 'lstm'}, checked."""
    known = config_fields(method)
    out: dict = {}
    for opt in options or []:
        key, raw = split_option(opt, f"KEY=VALUE, e.g. -o {next(iter(known))}=...")
        key = key.replace("-", "_")
        if key not in known:
            raise PromptTuneError(
                f"--method-option {key}: not a setting of method {method}; known: {', '.join(sorted(known))}."
            )
        out[key] = convert(key, raw, known[key])
    return out


def split_option(item: str, expected: str) -> tuple[str, str]:
    """'KEY=VALUE' -> ('KEY', 'VALUE'), stripped; an error saying what was ``expected`` otherwise.

    The one parser of ``-o`` / ``--method-option`` items: `train` (KEY=VALUE) and `compare` (METHOD.KEY=VALUE).
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise PromptTuneError(f"--method-option {item!r}: expected {expected}")
    return key.strip(), raw.strip()


def settings_for(method: str, shared: dict | None, own: dict | Sequence[str] | None) -> dict:
    """A method's config: the shared settings it has (others dropped), then its own (``KEY=VALUE`` strings or a
    dict; an unknown key is an error naming it)."""
    known = config_fields(method)
    config = {k: v for k, v in (shared or {}).items() if k in known}
    if isinstance(own, dict):
        unknown = sorted(set(own) - set(known))
        if unknown:
            raise PromptTuneError(f"method {method}: unknown setting(s) {unknown}; known: {', '.join(sorted(known))}.")
        return config | own
    return config | parse_method_options(method, list(own or []))


def convert(key: str, raw: str, kind):
    """A flag's text as ``kind`` (int, float, bool, str, or Optional of one); an error naming the flag."""
    args = typing.get_args(kind)
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if raw.lower() in ("none", "null", ""):
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if kind is bool:
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError
        return kind(raw)
    except ValueError:
        expected = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, kind.__name__)
        raise PromptTuneError(f"--method-option {key}={raw}: expected {expected}.") from None

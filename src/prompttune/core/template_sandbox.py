"""The sandbox templates render in: Jinja2's ImmutableSandboxedEnvironment with its globals cleared,
only plain values printable, include/import/extends refused and `*` / `**` blow-ups refused."""

from __future__ import annotations

import operator
from functools import cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prompttune.core.errors import TemplateError

MAX_TEXT = 1_000_000  # characters a `*` or `**` in a template may produce

_PLAIN = (str, int, float, bool)


def _only_plain_values(value):
    """Refuse to print anything but text, numbers and lists of them (no functions, classes, objects)."""
    if value is None or isinstance(value, (*_PLAIN, jinja2.Undefined)):  # Undefined raises its own error
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value):
        return value
    raise jinja2.exceptions.SecurityError(f"a template cannot print a {type(value).__name__} object")


def _no_includes(name: str):
    raise jinja2.exceptions.SecurityError(f"a template cannot include, import or extend another ({name!r})")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus: `'x' * 10**9` and `9**9**9` are refused instead of eating memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise jinja2.exceptions.SecurityError("a template cannot raise to a power above 64")
            return operator.pow(left, right)
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_TEXT:
                raise jinja2.exceptions.SecurityError(f"a template cannot build text longer than {MAX_TEXT:,}")
        return operator.mul(left, right)


ENV = _Sandbox(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
    finalize=_only_plain_values,
    loader=jinja2.FunctionLoader(_no_includes),
)
ENV.globals.clear()  # no range/dict/lipsum/cycler/joiner/namespace: every name is a variable or 'labels'


@cache
def parse(source: str):
    try:
        return ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template: {e.message} (line {e.lineno} of {source!r})") from None


def render_string(source: str, context: dict) -> str:
    """Render one template string in the sandbox; every failure is a TemplateError."""
    try:
        return ENV.from_string(source).render(context)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template: {e.message}; give it a value (a data field or --var NAME=VALUE).") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"template: {e}") from None

"""The bounds every template render runs under, and the checks the sandbox (template_sandbox.py) calls.

A template is user input: it may loop, call macros, do arithmetic and build text, so each of these is
bounded and passing a bound is a TemplateError that names it:

- ``MAX_TEMPLATE_CHARS``: characters of one template text (a 2 MB template is refused before parsing).
- ``MAX_NESTING``: brackets and blocks (for/if/macro/...) open at once. Python's own parser and compiler
  fail near 200 brackets or 20 nested loops with a RecursionError or SyntaxError; this stops well before.
- ``MAX_OUTPUT_CHARS``: characters of the rendered text, and of any value a template builds on the way
  (``*``, ``+``, ``~``, ``%``, ``str.format``, ``center``, ``join``, ``replace``, macro output...), which
  is checked *before* it is built where the size can be known (a width of 10**10 is refused, not tried).
- ``MAX_INT_DIGITS``: digits of an integer built by arithmetic (``((10**64)**64)**64`` is refused).
- ``MAX_LOOP_ITERATIONS``: loop iterations and calls (macros, methods) in one render, together.
- ``MAX_CALL_DEPTH``: macros and recursive loops nested inside each other.
- ``MAX_RENDER_SECONDS``: wall-clock time of one render, checked at every loop step, call, filter and
  intercepted operator (the other bounds keep each step between checks short).

A normal prompt template is far inside all of them (the built-ins: under 1,000 characters, no loops).
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass

import jinja2
from jinja2.exceptions import SecurityError

MAX_TEMPLATE_CHARS = 100_000
MAX_NESTING = 16
MAX_OUTPUT_CHARS = 1_000_000
MAX_INT_DIGITS = 1_000
MAX_LOOP_ITERATIONS = 100_000
MAX_CALL_DEPTH = 50
MAX_RENDER_SECONDS = 5.0


class LimitError(SecurityError):
    """A render passed one of the bounds above (a jinja2 error, so Jinja's handling applies)."""


def too_long(what: str = "text") -> LimitError:
    return LimitError(f"a template cannot build {what} longer than {MAX_OUTPUT_CHARS:,} characters (MAX_OUTPUT_CHARS)")


def too_many_digits() -> LimitError:
    return LimitError(f"a template cannot build a number of more than {MAX_INT_DIGITS:,} digits (MAX_INT_DIGITS)")


# --- the per-render budget: steps, call depth, deadline ----------------------------------------------
@dataclass
class Budget:
    deadline: float
    steps: int = 0
    depth: int = 0


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget", default=None)


def start() -> contextvars.Token:
    return _CURRENT.set(Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))


def finish(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def step(count: bool = True) -> Budget | None:
    """One loop iteration or call (``count``), and a check of the deadline."""
    budget = _CURRENT.get()
    if budget is None:
        return None
    if count:
        budget.steps += 1
        if budget.steps > MAX_LOOP_ITERATIONS:
            raise LimitError(
                f"a template cannot run more than {MAX_LOOP_ITERATIONS:,} loop iterations and calls "
                "(MAX_LOOP_ITERATIONS)"
            )
    if time.monotonic() > budget.deadline:
        raise LimitError(f"rendering took longer than {MAX_RENDER_SECONDS:g} s (MAX_RENDER_SECONDS)")
    return budget


def counted(iterable):
    """A loop's items, each one a step."""
    for item in iterable:
        step()
        yield item


# --- sizes: what a value would print as, and whether it may be printed at all -------------------------
_SCALARS = (str, bytes, int, float, bool, type(None), jinja2.Undefined)
_CONTAINERS = (list, tuple, set, frozenset, dict)


_OBJECT_KINDS = {
    "_Method": "method",
    "method": "method",
    "builtin_function_or_method": "method",
    "function": "function",
    "Macro": "macro",
    "LoopContext": "loop object",
    "TemplateReference": "self",
}


def digits(n: int) -> int:
    return int(abs(n).bit_length() * 0.30103) + 1


def measure(value, limit: int | None = None, objects_ok: bool = False) -> int:
    """About how many characters ``value`` prints as (text, numbers and containers of them).

    Raises LimitError past ``limit`` (MAX_OUTPUT_CHARS by default) without walking further, so a list of
    references doubled 40 times costs no more than the limit; an object (a method, macro, loop) is a
    SecurityError unless ``objects_ok`` (then it counts as nothing).
    """
    limit = MAX_OUTPUT_CHARS if limit is None else limit
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, int):
            total += digits(v)
        elif isinstance(v, _SCALARS):
            total += 5
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, _CONTAINERS):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif not objects_ok:
            kind = _OBJECT_KINDS.get(type(v).__name__, f"{type(v).__name__} object")
            raise SecurityError(f"a template cannot turn a {kind} into text (call it, or print one of its fields)")
        if total > limit:
            raise too_long()
    return total


def settle(value):
    """A value a filter or call returned, as a plain value: iterators and dict views become lists (each
    item a step, the whole bounded in size); anything that is not plain is refused."""
    if isinstance(value, Iterator | KeysView | ValuesView | ItemsView):
        items, size = [], 2
        for item in value:
            step(count=False)
            size += measure(item, MAX_OUTPUT_CHARS - size) + 2
            items.append(item)
        return items
    measure(value)
    return value


def check_output(value) -> None:
    if measure(value, objects_ok=True) > MAX_OUTPUT_CHARS:
        raise too_long()


# --- operators ---------------------------------------------------------------------------------------
def check_product(left, right) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if digits(left) + digits(right) > MAX_INT_DIGITS:
            raise too_many_digits()
        return
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and n > 0:
            if measure(seq, objects_ok=True) * n > MAX_OUTPUT_CHARS:
                raise too_long()


def check_power(base, exponent) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log10(abs(base)) > MAX_INT_DIGITS:
            raise too_many_digits()


def check_sum(left, right) -> None:
    for kind in (str | bytes, list, tuple):
        if isinstance(left, kind) and isinstance(right, kind):
            if measure(left, objects_ok=True) + measure(right, objects_ok=True) > MAX_OUTPUT_CHARS:
                raise too_long()


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)


def _number(text: str) -> int:
    return int(text) if len(text) < 16 else 10**16


def check_printf(fmt, args) -> None:
    """``fmt % args`` (the ``%`` operator on text, the ``format`` filter): values plain, widths bounded."""
    if not isinstance(fmt, str):
        return
    values = args if isinstance(args, tuple) else (args,)
    size, position = len(fmt) + measure(values), 0
    for m in _PRINTF_SPEC.finditer(fmt):
        width, precision, conversion = m.groups()
        if conversion == "%":
            continue
        for part in (width, precision):
            if part == "*":
                n = values[position] if position < len(values) else 0
                position += 1
                size += abs(n) if isinstance(n, int) else 0
            elif part:
                size += _number(part)
        position += 1
    if size > MAX_OUTPUT_CHARS:
        raise too_long()


def check_format_spec(value, spec: str) -> int:
    """The size one ``str.format`` field may reach: its value's and the numbers in its spec."""
    return measure(value) + sum(_number(d) for d in re.findall(r"\d+", spec))


# --- filters and methods whose output can be far larger than their input -------------------------------
def _int(n, default: int = 0) -> int:
    return n if isinstance(n, int) else default


def _replace_size(s, old, new, count=None) -> int:
    s, old, new = str(s), str(old), str(new)
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(len(new) - len(old), 0)


def _join_size(value, d="", attribute=None) -> int:
    return measure(value) + max(len(value) - 1, 0) * len(str(d))


def _indent_size(s, width=4, first=False, blank=False) -> int:
    s = str(s)
    return len(s) + (s.count("\n") + 1) * (len(width) if isinstance(width, str) else _int(width))


def _wordwrap_size(s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True) -> int:
    s = str(s)
    breaks = len(s) // max(_int(width, 1), 1) + sum(s.count(c) for c in " \t\n-") + 1
    return len(s) + breaks * len(wrapstring or "\n")


def _urlize_size(value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None) -> int:
    s = str(value)
    return 2 * len(s) + (len(s) // 3 + 1) * (len(str(target or "")) + len(str(rel or "")) + 40)


def _round_size(value, precision=0, method="common") -> int:
    if isinstance(precision, int) and abs(precision) > MAX_INT_DIGITS:
        raise too_many_digits()
    return 0


def _format_size(value, *args, **kwargs) -> int:
    check_printf(str(value), kwargs or args)
    return 0


FILTER_SIZE = {
    "center": lambda value, width=80: max(len(str(value)), _int(width)),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "replace": _replace_size,
    "join": _join_size,
    "format": _format_size,
    "urlize": _urlize_size,
    "round": _round_size,
    "batch": lambda value, linecount, fill_with=None: 0 if fill_with is None else 2 * _int(linecount),
    "slice": lambda value, slices, fill_with=None: 2 * _int(slices),
}


def method_size(method, args: tuple, kwargs: dict) -> int:
    """The size a str/bytes/int method's result may reach, judged from its arguments (0: not a grower)."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str | bytes | bytearray | int):
        return 0
    name, given = method.__name__, (*args, *kwargs.values())
    numbers = [abs(v) for v in given if isinstance(v, int)]
    if name in ("center", "ljust", "rjust", "zfill", "to_bytes"):
        return max(numbers, default=0)
    if isinstance(owner, int):
        return 0
    if name == "expandtabs":
        tab = "\t" if isinstance(owner, str) else b"\t"
        return len(owner) + owner.count(tab) * max(numbers, default=8)
    if name == "replace" and len(args) >= 2:
        return _replace_size(owner, *args[:2], *(args[2:3] or [kwargs.get("count", -1)]))
    if name == "join" and args:
        items = args[0]
        if not isinstance(items, str | list | tuple | dict):
            return 0  # an iterator: its result is checked once built
        return measure(items) + max(len(items) - 1, 0) * len(owner)
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        return len(owner) * max(longest, 1)
    return 0

"""The sandbox templates render in: Jinja2's ImmutableSandboxedEnvironment with its globals cleared,
include/import/extends refused, and every render bounded (the limits and their reasons are in
template_limits.py: MAX_TEMPLATE_CHARS, MAX_NESTING, MAX_OUTPUT_CHARS, MAX_INT_DIGITS,
MAX_LOOP_ITERATIONS, MAX_CALL_DEPTH, MAX_RENDER_SECONDS).

How each bound is held, through Jinja2's own extension points:
- the template text: its size and nesting are checked before Jinja parses it (Python's parser would
  raise RecursionError at ~200 brackets); a template that still cannot compile is a TemplateError;
- operators: ``*``, ``**``, ``+`` and ``%`` are intercepted (``intercepted_binops``), sizes and digits
  checked before the result is built; ``~`` is compiled to a checked join (``code_generator_class``);
- filters: every filter is wrapped: its inputs must be plain values within the size bound, the ones
  that grow (``center``, ``indent``, ``join``, ``replace``, ``format``, ``wordwrap``...) are sized from
  their arguments first, and iterators they return become lists (so no ``<generator at 0x…>``);
- calls (``call``): str/bytes/int methods are sized from their arguments (``q.center(10**10)``), each
  call is a step, macros and recursive loops nest at most MAX_CALL_DEPTH, results are sized;
- loops: the code generator passes every ``{% for %}`` iterable through a counting filter, so each
  iteration is a step;
- text built from blocks (macro bodies, ``{% set %}`` blocks) goes through a bounded ``concat``, and the
  render itself streams (``generate``) and stops at MAX_OUTPUT_CHARS;
- no object reprs: a method fetched from a value is handed out wrapped (it can be called, never turned
  into text), and printing, ``~``, ``%``, ``str.format`` and filters refuse anything but text, numbers
  and lists/dicts of them.
"""

from __future__ import annotations

import functools
import re
from functools import lru_cache
from types import BuiltinMethodType

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

from prompttune.core import template_limits as limits
from prompttune.core.errors import TemplateError
from prompttune.core.template_limits import (  # noqa: F401  (the limits, importable from here too)
    MAX_CALL_DEPTH,
    MAX_INT_DIGITS,
    MAX_LOOP_ITERATIONS,
    MAX_NESTING,
    MAX_OUTPUT_CHARS,
    MAX_RENDER_SECONDS,
    MAX_TEMPLATE_CHARS,
    LimitError,
)

_PLAIN = (str, int, float, bool)


def _only_plain_values(value):
    """Refuse to print anything but text, numbers and lists of them (no functions, classes, objects)."""
    if value is None or isinstance(value, (*_PLAIN, jinja2.Undefined)):  # Undefined raises its own error
        if isinstance(value, str) and len(value) > limits.MAX_OUTPUT_CHARS:
            raise limits.too_long()
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value):
        limits.check_output(value)
        return value
    raise jinja2.exceptions.SecurityError(f"a template cannot print a {type(value).__name__} object")


def _no_includes(name: str):
    raise jinja2.exceptions.SecurityError(f"a template cannot include, import or extend another ({name!r})")


class _Method:
    """A method or macro fetched from a value: callable, but never text (``q.upper|string``, ``~``)."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def _refuse(self, *_):
        raise jinja2.exceptions.SecurityError("a template cannot turn a method into text; call it: name()")

    __str__ = __repr__ = __format__ = _refuse


def _hide_callable(value):
    if callable(value) and not isinstance(value, jinja2.Undefined | _Method):
        return _Method(value)
    return value


class _BoundedFormatting:
    """``str.format``: fields plain values, widths and the whole text within MAX_OUTPUT_CHARS."""

    def vformat(self, format_string, args, kwargs):
        self.size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value, conversion):
        limits.measure(value)  # `{!r}` of a method would print its address
        return super().convert_field(value, conversion)

    def format_field(self, value, format_spec):
        self.size += limits.check_format_spec(value, format_spec)
        if self.size > limits.MAX_OUTPUT_CHARS:
            raise limits.too_long()
        return super().format_field(value, format_spec)


class _Formatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


_LOOP_FILTER = "_loop_items"  # counts a loop's items (the user can call it too: it only counts)


class _CodeGenerator(CodeGenerator):
    def visit_Template(self, node, frame=None):
        for loop in node.find_all(nodes.For):  # `for x in items` becomes `for x in items|_loop_items`
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == _LOOP_FILTER):
                loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    @optimizeconst
    def visit_Concat(self, node, frame):
        """``a ~ b``: checked (plain values, bounded size) before Jinja's own join."""
        if frame.eval_ctx.volatile:  # the same choice as Jinja's own visit_Concat
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.checked_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _bounded_filter(name: str, function):
    size_of = limits.FILTER_SIZE.get(name)
    lead_types = (Context, nodes.EvalContext, jinja2.Environment)

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_eval_context marks
    def bounded(*args, **kwargs):
        limits.step(count=False)
        lead = 1 if args and isinstance(args[0], lead_types) else 0
        for value in (*args[lead:], *kwargs.values()):
            limits.measure(value)
        if size_of is not None and size_of(*args[lead:], **kwargs) > limits.MAX_OUTPUT_CHARS:
            raise limits.too_long()
        return limits.settle(function(*args, **kwargs))

    return bounded


def _bounded_concat(pieces) -> str:
    """Jinja's ``concat`` for block buffers (macro bodies, ``{% set %}`` blocks), bounded in size."""
    kept, size = [], 0
    for piece in pieces:
        size += len(piece)
        if size > limits.MAX_OUTPUT_CHARS:
            raise limits.too_long()
        kept.append(piece)
    return "".join(kept)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every render bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator

    def call_binop(self, context, operator_name, left, right):
        limits.step(count=False)
        if operator_name == "**":
            limits.check_power(left, right)
        elif operator_name == "*":
            limits.check_product(left, right)
        elif operator_name == "+":
            limits.check_sum(left, right)
        elif operator_name == "%":
            limits.check_printf(left, right)
        return self.binop_table[operator_name](left, right)

    def getattr(self, obj, attribute):
        return _hide_callable(super().getattr(obj, attribute))

    def getitem(self, obj, argument):
        return _hide_callable(super().getitem(obj, argument))

    def wrap_str_format(self, value):
        """``str.format`` / ``format_map`` through a formatter that bounds widths and refuses objects."""
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        text, is_map = value.__self__, value.__name__ == "format_map"
        formatter = _EscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) else _Formatter(self)

        def bounded(*args, **kwargs):
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(text)(formatter.vformat(text, args, kwargs))

        return functools.update_wrapper(bounded, value)

    def checked_join(self, join, values):
        size = 0
        for value in values:
            size += limits.measure(value, limits.MAX_OUTPUT_CHARS - size)
        return join(values)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own signature)
        budget = limits.step()
        if isinstance(__obj, _Method):
            __obj = __obj.function
        for value in (*args, *kwargs.values()):
            limits.measure(value, objects_ok=True)
        if isinstance(__obj, BuiltinMethodType) and limits.method_size(__obj, args, kwargs) > limits.MAX_OUTPUT_CHARS:
            raise limits.too_long()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level: count its items too
            args = (limits.counted(args[0]), *args[1:])
        if budget is not None:
            budget.depth += 1
        try:
            if budget is not None and budget.depth > limits.MAX_CALL_DEPTH:
                raise LimitError(
                    f"macros and recursive loops cannot nest more than {limits.MAX_CALL_DEPTH} deep (MAX_CALL_DEPTH)"
                )
            return limits.settle(super().call(__context, __obj, *args, **kwargs))
        finally:
            if budget is not None:
                budget.depth -= 1


ENV = _Sandbox(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
    finalize=_only_plain_values,
    loader=jinja2.FunctionLoader(_no_includes),
)
ENV.globals.clear()  # no range/dict/lipsum/cycler/joiner/namespace: every name is a variable or 'labels'
ENV.filters = {name: _bounded_filter(name, f) for name, f in ENV.filters.items()}
ENV.filters[_LOOP_FILTER] = limits.counted
ENV.concat = _bounded_concat

# --- parsing and rendering: every failure is a TemplateError ---------------------------------------------
_BLOCKS = {"for", "if", "macro", "call", "filter", "with", "block", "autoescape", "set"}
_SOFT_SENTINEL = re.compile("\ue000\\d+\ue001")


def _where(source: str) -> str:
    text = _SOFT_SENTINEL.sub("[soft]", source)
    return f" (in the template {text[:60] + ('…' if len(text) > 60 else '')!r})"


def _check_text(source: str) -> None:
    """The template text within MAX_TEMPLATE_CHARS, and brackets/blocks within MAX_NESTING."""
    if len(source) > limits.MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"template: the text is {len(source):,} characters, more than {limits.MAX_TEMPLATE_CHARS:,} "
            "(MAX_TEMPLATE_CHARS); put long content in a variable instead."
        )
    depth, tag, has_assign = 0, None, False
    try:
        for line, kind, value in ENV.lex(source):
            if kind == "block_begin":
                tag, has_assign = "", False
            elif kind == "name" and tag == "":
                tag = value
                depth += value in _BLOCKS - {"set"}
                depth -= value.startswith("end") and value[3:] in _BLOCKS
            elif kind == "operator":
                depth += value in "([{"
                depth -= value in ")]}"
                has_assign |= value == "="
            elif kind == "block_end":
                depth += tag == "set" and not has_assign  # {% set x %}...{% endset %}
                tag = None
            if depth > limits.MAX_NESTING:
                raise TemplateError(
                    f"template: line {line}: brackets and blocks nest deeper than {limits.MAX_NESTING} "
                    f"(MAX_NESTING){_where(source)}"
                )
    except jinja2.TemplateSyntaxError:
        return  # the parser reports it, with its line


def _compile_errors(source: str, make):
    try:
        return make()
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template: {e.message} (line {e.lineno} of {source!r})") from None
    except (RecursionError, SyntaxError, MemoryError):  # a chain of hundreds of operators, say
        raise TemplateError(
            f"template: too deeply nested to compile; split long expressions with {{% set %}}{_where(source)}"
        ) from None
    except ValueError as e:  # e.g. an integer literal of more than 4,300 digits
        raise TemplateError(f"template: {e}{_where(source)}") from None


@lru_cache(maxsize=512)
def _compiled(source: str) -> jinja2.Template:
    _check_text(source)
    return _compile_errors(source, lambda: ENV.from_string(source))


@lru_cache(maxsize=512)
def parse(source: str):
    """The template's syntax tree (for finding its variables); checks it compiles too."""
    _compiled(source)
    return _compile_errors(source, lambda: ENV.parse(source))


def render_string(source: str, context: dict) -> str:
    """Render one template string in the sandbox, within the limits; every failure is a TemplateError."""
    template = _compiled(source)
    token = limits.start()
    try:
        pieces, size = [], 0
        for piece in template.generate(context):
            size += len(piece)
            if size > limits.MAX_OUTPUT_CHARS:
                raise limits.too_long("a rendered text")
            pieces.append(piece)
        return "".join(pieces)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template: {e.message}; give it a value (a data field or --var NAME=VALUE).") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"template: {e}{_where(source)}") from None
    except RecursionError:
        raise TemplateError(
            f"template: calls nest too deeply (the limit is MAX_CALL_DEPTH = {limits.MAX_CALL_DEPTH}){_where(source)}"
        ) from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RuntimeError, MemoryError) as e:
        raise TemplateError(f"template: {type(e).__name__}: {e}{_where(source)}") from None
    finally:
        limits.finish(token)

"""Tools an agent can call: a safe calculator, retrieval over a vector index, and user functions.

A tool is a name, a one-line description (shown to the model) and a function from one string to one
string. A tool signals a problem with its input by raising ``ToolError``; the agent shows the model
the message as the observation, and the run goes on.
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.errors import DataError, PromptTuneError


class ToolError(Exception):
    """A tool could not do what it was asked; the message goes back to the model as the observation."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    func: Callable[[str], object]
    # (question, tool input) for a worked example the agent shows the model; the tool computes its result.
    example: tuple[str, str] | None = None

    def __call__(self, text: str) -> str:
        return str(self.func(text))

    def line(self) -> str:
        return f"{self.name}: {self.description}"


def as_tool(
    obj: Tool | Callable,
    name: str | None = None,
    description: str | None = None,
    example: tuple[str, str] | None = None,
) -> Tool:
    """A Tool from a Tool or from a plain function of one string (its name and docstring describe it)."""
    if isinstance(obj, Tool):
        return obj
    if not callable(obj):
        raise DataError(f"tool {obj!r}: not a function; register functions of one string argument.")
    name = name or getattr(obj, "__name__", None)
    if not name or not name.isidentifier():
        raise DataError(f"tool {obj!r}: give it a name (letters, digits, _).")
    doc = description or (inspect.getdoc(obj) or "").strip().split("\n")[0] or f"the {name} function"
    return Tool(name, doc, obj, example)


# --- calculator ---------------------------------------------------------------------------------
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_RESULT_BITS = 4096  # integers past ~1,200 digits are refused, so no expression can eat memory or time
MAX_ROUND_DIGITS = 1300  # round(x, n): |n| at most this (10 ** |n| is computed; every bounded int fits)
# Errors describe what is allowed without a literal expression: a small model copies an example it is
# shown into its next call (the default decoder called the calculator with the error's example).
ALLOWED = "numbers, + - * / // % **, parentheses, pi, e and the functions {functions}"


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic: numbers, + - * / // % **, unary +/-, parentheses, pi, e and a few math functions.

    Anything else (names, attributes, calls of other functions, strings, comprehensions) is refused with
    a ToolError, before anything is evaluated.
    """
    text = _normalise(expression)
    if not text:
        raise ToolError("calculator: the expression is empty; give the arithmetic to compute.")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"calculator: the expression is longer than {MAX_EXPRESSION_CHARS} characters.")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"calculator: {text!r} is not arithmetic; write it with {_allowed()}.") from None
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("calculator: division by zero.") from None
    except (OverflowError, ValueError, TypeError) as e:  # math range/domain errors, wrong argument counts
        raise ToolError(f"calculator: {e}.") from None


def _allowed() -> str:
    return ALLOWED.format(functions=", ".join(_FUNCTIONS))


def _normalise(expression: str) -> str:
    text = expression.strip()
    while len(text) > 1 and text[0] == text[-1] and text[0] in "`'\"":  # a quoted expression
        text = text[1:-1].strip()
    text = text.rstrip("=").strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    return text.replace(",", "") if "(" not in text else text  # 1,000 -> 1000 (commas are arguments in calls)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        args = [_eval(a) for a in node.args]
        if node.func.id == "round":
            _check_round(args)
        return _bounded(_FUNCTIONS[node.func.id](*args))
    what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise ToolError(f"calculator: {what!r} is not allowed; use {_allowed()}.")


def _check_round(args: list) -> None:
    """round(x, n) computes 10 ** |n|: round(1, -10**18) would run for hours."""
    if len(args) == 2:
        digits = args[1]
        if not isinstance(digits, int):
            raise ToolError("calculator: round's second argument (the digits) must be a whole number.")
        if abs(digits) > MAX_ROUND_DIGITS:
            raise ToolError(f"calculator: round to {digits} digits is out of range (at most {MAX_ROUND_DIGITS}).")


def _check_power(base: float, exponent: float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"calculator: exponent {exponent} is too large (at most {MAX_EXPONENT}).")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if math.log2(abs(base)) * exponent > MAX_RESULT_BITS:
            raise ToolError(f"calculator: {base} ** {exponent} is too large a number.")


def _bounded(value):
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise ToolError("calculator: the result is too large a number.")
    if isinstance(value, complex):
        raise ToolError("calculator: the result is not a real number.")
    return value


def _calculator(text: str) -> str:
    value = calculate(text)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}" if isinstance(value, float) else str(value)


calculator = Tool(
    "calculator",
    "evaluates arithmetic. Input: an expression such as 12 * (3 + 4) or sqrt(2) / 3.",
    _calculator,
    example=("What is 12 * (3 + 4)?", "12 * (3 + 4)"),
)


# --- retrieval ----------------------------------------------------------------------------------
def search_tool(index, k: int = 3, max_chars: int = 600) -> Tool:
    """A ``search`` tool over a VectorIndex: the ``k`` nearest passages, numbered, each cut to ``max_chars``."""

    def search(query: str) -> str:
        if not query.strip():
            raise ToolError("search: the query is empty; give a few words to search for.")
        hits = index.search(query, k=k)
        return "\n".join(f"[{i}] ({h.chunk.source}) {_cut(h.chunk.text, max_chars)}" for i, h in enumerate(hits, 1))

    return Tool("search", "finds passages about a topic in the document index. Input: a search query.", search)


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3].rsplit(" ", 1)[0] + "..."


# --- the registry of tools the CLI can name ------------------------------------------------------
@dataclass(frozen=True)
class ToolContext:
    """What tools made by name may need: the vector index directory, and how many passages to show."""

    index: Path | None = None
    k: int = 3


def _make_search(ctx: ToolContext) -> Tool:
    from prompttune.rag.index import VectorIndex

    if ctx.index is None:
        raise PromptTuneError("--tool search needs --index DIR (a directory made by  prompttune rag index).")
    return search_tool(VectorIndex.load(ctx.index), k=ctx.k)


TOOLS: dict[str, Callable[[ToolContext], Tool]] = {
    "calculator": lambda ctx: calculator,
    "search": _make_search,
}


def register_tool(name: str, factory: Callable[[ToolContext], Tool]) -> None:
    """Make a tool available by name (``--tool NAME``)."""
    TOOLS[name] = factory


def build_tools(names: list[str], ctx: ToolContext) -> list[Tool]:
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise DataError(f"--tool {unknown[0]}: no such tool; available: {', '.join(sorted(TOOLS))}.")
    return [TOOLS[n](ctx) for n in dict.fromkeys(names)]

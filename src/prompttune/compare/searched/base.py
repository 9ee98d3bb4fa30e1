"""What a searched arm is: a way of finding a readable (hard) prompt on a cell's training rows.

An arm registers a ``SearchedArm``: its own settings and their types, the harness keys it reads, a check of the
values (run before any cell, so a bad ``-o NAME.KEY=VALUE`` is an error naming it), and ``find``, which searches
on the cell's rows and returns the found prompt as a ``PromptTask`` with no trainable parameters. The cell then
scores that task on the test rows exactly as it scores every other arm (compare/cell.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prompttune.core.errors import PromptTuneError

KIND = "readable prompt"  # the report's kind column


@dataclass
class SearchContext:
    """What a cell hands an arm's ``find``: the arm's settings, the model, the rows, the read-out, the seed."""

    options: dict  # the arm's settings (defaults, then --method-option)
    settings: dict  # the comparison's settings (max_steps, batch_size, template, verbalizer ...)
    backbone: Any
    train: Any  # Dataset: the cell's training rows
    val: Any  # Dataset: the comparison's validation rows
    labels: list[str]
    template: Any  # Template: the comparison's template (soft slots where it has them)
    seed: int
    emit: Callable[[dict], None]


@dataclass(frozen=True)
class SearchedArm:
    name: str
    options: dict[str, type]  # its own settings and their types (-o NAME.KEY=VALUE)
    harness: frozenset[str]  # the harness keys (arms.HARNESS_KEYS) it reads; the others are errors
    defaults: dict
    check: Callable[[str, dict], None]  # (arm name, settings) -> raises PromptTuneError naming the option
    find: Callable[[SearchContext], tuple[Any, dict]]  # -> (PromptTask to score, cost and search figures)


SEARCHED: dict[str, SearchedArm] = {}


def register(arm: SearchedArm) -> SearchedArm:
    SEARCHED[arm.name] = arm
    return arm


def option_error(name: str, key: str, value, what: str) -> PromptTuneError:
    return PromptTuneError(f"--method-option {name}.{key}={value}: {what}")


def check_names(arm: SearchedArm, name: str, given: dict, why: dict[str, str] | None = None) -> None:
    """Every key given is one of the arm's settings or harness keys; an error naming the first that is not."""
    known = set(arm.options) | set(arm.harness)
    for key in given:
        if key not in known:
            reason = (why or {}).get(key) or f"not a setting of {name}"
            raise PromptTuneError(f"--method-option {name}.{key}: {reason}; its settings: {', '.join(sorted(known))}.")

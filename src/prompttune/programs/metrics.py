"""Metrics a program is optimized for: ``metric(row, prediction) -> score in [0, 1]``.

- ``accuracy``: every target field predicted exactly (case and surrounding space ignored);
- ``em``: exact match after SQuAD's normalization (lowercase, no punctuation or articles); a list of gold
  answers counts the best;
- ``f1``: SQuAD's token F1, best over the gold answers;
- ``MODULE:FN``: a function of yours, ``FN(row: dict, prediction: dict) -> float | bool``, from an importable
  module or a ``.py`` file (``metrics.py:score``).

The target fields are the program's final outputs that the row holds.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prompttune.core.errors import DataError

Metric = Callable[[dict, dict], float]
BUILTIN = ("accuracy", "em", "f1")


def normalize_answer(text: str) -> str:
    text = "".join(c for c in str(text).lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _golds(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def make_metric(name: str, targets: list[str]) -> Metric:
    """The metric ``name`` over the ``targets`` fields; MODULE:FN loads your function."""
    if name not in BUILTIN:
        return load_metric(name)
    if not targets:
        raise DataError(f"--metric {name}: the data holds none of the program's outputs to compare with.")

    def per_field(pred, gold) -> float:
        if name == "accuracy":
            return float(any(str(pred).strip().lower() == g.strip().lower() for g in _golds(gold)))
        if name == "em":
            return float(any(normalize_answer(pred) == normalize_answer(g) for g in _golds(gold)))
        return max(token_f1(str(pred), g) for g in _golds(gold))

    def metric(row: dict, prediction: dict) -> float:
        scores = [per_field(prediction.get(t, ""), row[t]) for t in targets if t in row]
        return sum(scores) / len(scores) if scores else 0.0

    metric.__name__ = name
    return metric


def load_metric(spec: str) -> Metric:
    module_name, colon, fn_name = spec.rpartition(":")
    if not colon or not module_name or not fn_name:
        raise DataError(f"--metric {spec!r}: use {', '.join(BUILTIN)} or MODULE:FN (e.g. my_metrics:score).")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise DataError(f"--metric {spec!r}: file {path} not found.")
            loader = importlib.util.spec_from_file_location(f"prompttune_user_metric_{path.stem}", path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(f"--metric {spec!r}: cannot import {module_name!r} ({e}).") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise DataError(f"--metric {spec!r}: {module_name!r} has no function {fn_name!r}.")

    def metric(row: dict, prediction: dict) -> float:
        value = fn(row, prediction)
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise DataError(f"--metric {spec!r}: returned {value!r}; a metric returns a bool or a number in [0, 1].")
        return float(value)

    metric.__name__ = spec
    return metric

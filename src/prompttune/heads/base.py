"""Read-out heads other than the verbalizer, and the tasks that train them.

A head task (classification, token tagging, extractive QA) knows its data (fields, checks), how to
turn rows into token ids, its loss over a batch, its predictions and its metric. One registry maps
the head kind to its task, so the CLI and the API never branch on the kind.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from prompttune.core.data import Dataset
from prompttune.core.errors import DataError
from prompttune.heads.model import HeadModel

HEAD_KINDS: dict[str, type[HeadKind]] = {}


def register_kind(cls: type[HeadKind]) -> type[HeadKind]:
    HEAD_KINDS[cls.kind] = cls
    return cls


class HeadKind:
    """What a head-based task provides; subclasses fill every method."""

    kind: ClassVar[str]
    metric: ClassVar[str]  # the validation metric's name (higher is better)
    fields: ClassVar[tuple[str, ...]]  # the fields a row must have

    def __init__(self, labels: list[str], settings: dict | None = None):
        self.labels = list(labels)
        self.settings = dict(settings or {})

    @classmethod
    def labels_from(cls, dataset: Dataset) -> list[str]:
        return []

    @classmethod
    def matches(cls, fields: dict) -> bool:
        return all(f in fields for f in cls.fields)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "labels": self.labels, "settings": self.settings}

    def make_head(self, hidden_size: int) -> nn.Module:
        raise NotImplementedError

    def encode(self, model: HeadModel, dataset: Dataset, training: bool) -> list:
        """Training/eval examples (checked: errors name the row)."""
        raise NotImplementedError

    def length(self, example) -> int:
        return len(example.ids)

    def loss(self, model: HeadModel, examples: list, prefix) -> Tensor:
        raise NotImplementedError

    def predict(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list:
        raise NotImplementedError

    def evaluate(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> dict:
        """Metrics, with the validation metric under ``self.metric``."""
        raise NotImplementedError

    # A validation split over data-parallel ranks: each rank's part gives sums (``n_counts`` of them) that add up
    # over the parts to the whole set's, and ``metric_of`` their totals is ``evaluate``'s ``self.metric``.
    n_counts: ClassVar[int]

    def counts(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[float]:
        raise NotImplementedError

    def metric_of(self, counts: list[float]) -> float:
        raise NotImplementedError


def check_fields(dataset: Dataset, fields: tuple[str, ...], kind: str) -> None:
    for row in dataset.rows:
        missing = [f for f in fields if f not in row.fields or row.fields[f] is None]
        if missing:
            raise DataError(
                f"{row.where()}: missing field {missing[0]!r}; a {kind} task needs {', '.join(fields)} "
                f"(the row has {', '.join(sorted(row.fields)) or 'no fields'})."
            )


def detect_kind(dataset: Dataset) -> str | None:
    """The head kind the data's fields call for (tokens+tags: tagging, context+question+answers: span)."""
    first = dataset.rows[0].fields
    for kind, cls in HEAD_KINDS.items():
        if kind != "classification" and cls.matches(first):
            return kind
    return None

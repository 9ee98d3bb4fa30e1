"""The classification head: a linear layer over one pooled vector a row ([CLS] or the last token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError
from prompttune.core.metrics import classification_report
from prompttune.heads.base import HeadKind, register_kind
from prompttune.heads.model import HeadModel


class PooledClassifier(nn.Module):
    """A linear layer over one vector a row: the [CLS] state (encoder) or the last token's (decoder)."""

    def __init__(self, hidden_size: int, n_labels: int, pool: str):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(hidden_size, n_labels)

    def forward(self, hidden: Tensor, lengths: Tensor) -> Tensor:
        if self.pool == "mean":
            mask = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).float()
            vec = (hidden * mask[..., None]).sum(1) / lengths[:, None]
        elif self.pool == "last":
            vec = hidden[torch.arange(hidden.shape[0]), lengths - 1]
        else:  # first ([CLS])
            vec = hidden[:, 0]
        return self.linear(vec)  # (b, n_labels)


@dataclass
class ClassExample:
    ids: list[int]
    label: int


@register_kind
class ClassificationKind(HeadKind):
    kind = "classification"
    metric = "accuracy"
    fields = ("text",)

    @classmethod
    def labels_from(cls, dataset: Dataset) -> list[str]:
        labels = dataset.labels()
        if len(labels) < 2:
            raise DataError(f"{dataset.source}: the rows have {len(labels)} label(s); a classifier needs two or more.")
        return labels

    def make_head(self, hidden_size: int) -> nn.Module:
        return PooledClassifier(hidden_size, len(self.labels), self.settings.get("pool", "first"))

    def _text_fields(self, row: Row) -> list[str]:
        if "text_a" in row.fields and "text_b" in row.fields:
            return [str(row.fields["text_a"]), str(row.fields["text_b"])]
        if "text" not in row.fields:
            raise DataError(f"{row.where()}: missing field 'text' (or 'text_a' and 'text_b').")
        return [str(row.fields["text"])]

    def _ids(self, model: HeadModel, row: Row) -> list[int]:
        ids = list(model.open_ids)
        for text in self._text_fields(row):
            ids += model.backbone.tokenize(text) + model.sep_ids
        return ids[: model.max_row_length]

    def row_ids(self, model: HeadModel, row: Row) -> list[int]:
        """A row's token ids as the head reads them (the server's mixed batches use this)."""
        return self._ids(model, row)

    def encode(self, model: HeadModel, dataset: Dataset, training: bool) -> list[ClassExample]:
        out = []
        index = {label: i for i, label in enumerate(self.labels)}
        for row in dataset.rows:
            label = row.label
            if label not in index:
                raise DataError(
                    f"{row.where()}: label {label!r} is not one of the trained labels ({', '.join(self.labels)})."
                )
            out.append(ClassExample(self._ids(model, row), index[label]))
        return out

    def _logits(self, model: HeadModel, ids: list[list[int]], prefix) -> Tensor:
        hidden = model.hidden(ids, prefix)
        return model.head(hidden, torch.tensor([len(x) for x in ids], device=hidden.device))

    def loss(self, model: HeadModel, examples: list[ClassExample], prefix) -> Tensor:
        logits = self._logits(model, [e.ids for e in examples], prefix)
        return F.cross_entropy(logits, torch.tensor([e.label for e in examples], device=logits.device))

    @torch.no_grad()
    def probabilities(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> Tensor:
        ids = [self._ids(model, row) for row in dataset.rows]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), len(self.labels))
        prefix = model.cached_prefix()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self._logits(model, [ids[i] for i in idx], prefix).softmax(-1).float().cpu()
        return out

    def predict(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[dict]:
        probs = self.probabilities(model, dataset, batch_size)
        return [
            {"label": self.labels[int(p.argmax())], "scores": dict(zip(self.labels, map(float, p), strict=True))}
            for p in probs
        ]

    def evaluate(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> dict:
        gold = torch.tensor([e.label for e in self.encode(model, dataset, training=False)])
        pred = self.probabilities(model, dataset, batch_size).argmax(-1)
        return classification_report(pred, gold, self.labels)

    n_counts = 2  # rows right, rows

    def counts(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[float]:
        report = self.evaluate(model, dataset, batch_size)
        return [float(round(report["accuracy"] * report["n"])), float(report["n"])]

    def metric_of(self, counts: list[float]) -> float:
        right, n = counts
        return right / n if n else 0.0

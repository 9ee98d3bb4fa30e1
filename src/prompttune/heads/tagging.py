"""Sequence labelling (NER with IOB2 tags): a linear head over each word's first sub-token.

Rows have ``tokens`` (words) and ``tags`` (one per word). Words are split into sub-tokens; the label
is read (and trained) on each word's first sub-token only. The metric is entity-level precision,
recall and F1 exactly as seqeval computes them by default (conlleval's chunking rules: an ``I-``
after ``O`` or after another type starts an entity), micro-averaged, and per entity type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError
from prompttune.heads.base import HeadKind, check_fields, register_kind
from prompttune.heads.model import HeadModel


# --- seqeval's entity extraction (seqeval.metrics.sequence_labeling, default mode) ---------------------
def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(seq: list[str] | list[list[str]]) -> list[tuple[str, int, int]]:
    """(type, first, last) of every entity; nested lists are joined with an ``O`` between sentences."""
    if any(isinstance(s, list) for s in seq):
        seq = [item for sub in seq for item in [*sub, "O"]]
    prev_tag, prev_type, begin, chunks = "O", "", 0, []
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _prf(correct: int, pred: int, true: int) -> dict:
    p = correct / pred if pred else 0.0
    r = correct / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": true}


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro precision/recall/F1 over entities (seqeval's f1_score etc.), and the same per type."""
    true, found = set(get_entities(gold)), set(get_entities(pred))
    out = _prf(len(true & found), len(found), len(true))
    types = sorted({t for t, _, _ in true | found})
    out["per_type"] = {
        t: _prf(
            len({e for e in true & found if e[0] == t}),
            sum(e[0] == t for e in found),
            sum(e[0] == t for e in true),
        )
        for t in types
    }
    return out


# --- the task ----------------------------------------------------------------------------------------
@dataclass
class TagExample:
    ids: list[int]
    first: list[int]  # position of each kept word's first sub-token
    tags: list[int]  # tag index of each kept word (-100 in prediction-only examples)
    n_words: int  # words in the row (those cut by truncation are predicted "O")


class TokenHead(nn.Module):
    def __init__(self, hidden_size: int, n_tags: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, n_tags)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(self.dropout(hidden))  # (b, t, n_tags)


@register_kind
class TaggingKind(HeadKind):
    kind = "tokens"
    metric = "f1"
    fields = ("tokens", "tags")

    @classmethod
    def labels_from(cls, dataset: Dataset) -> list[str]:
        check_fields(dataset, cls.fields, "tagging")
        seen = {str(t) for row in dataset.rows for t in row.fields["tags"]}
        rest = sorted(seen - {"O"}, key=lambda t: (t[2:], t))
        return ["O", *rest]

    def make_head(self, hidden_size: int) -> nn.Module:
        return TokenHead(hidden_size, len(self.labels))

    @property
    def max_length(self) -> int:
        return int(self.settings.get("max_length", 256))

    def _example(self, model: HeadModel, row: Row, with_tags: bool) -> TagExample:
        words = row.fields.get("tokens")
        if words is None and not with_tags and "text" in row.fields:
            words = str(row.fields["text"]).split()  # plain text to predict: whitespace words
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{row.where()}: field 'tokens' must be a list of strings (the words).")
        tags = row.fields.get("tags") if with_tags else None
        index = {t: i for i, t in enumerate(self.labels)}
        if with_tags:
            if not isinstance(tags, list) or len(tags) != len(words):
                n = len(tags) if isinstance(tags, list) else "no list of"
                raise DataError(f"{row.where()}: {len(words)} tokens but {n} tags; give exactly one tag per token.")
            for j, t in enumerate(tags):
                if t not in index:
                    raise DataError(
                        f"{row.where()}: tag {t!r} (token {j + 1}, {words[j]!r}) is not in the label set "
                        f"({', '.join(self.labels)}); fix the tag or train on data that has it."
                    )
        limit = min(self.max_length, model.max_row_length) - len(model.sep_ids)
        ids, first, kept = list(model.open_ids), [], []
        decoder = model.backbone.kind == "decoder"
        pieces = (
            model.backbone.tokenizer(
                [(" " + w if decoder and j else w) for j, w in enumerate(words)], add_special_tokens=False
            )["input_ids"]
            if words
            else []
        )
        unk = model.backbone.tokenizer.unk_token_id
        for j, sub in enumerate(pieces):
            sub = sub or ([unk] if unk is not None else [])
            if not sub or len(ids) + len(sub) > limit:
                if not sub:
                    continue
                break
            first.append(len(ids))
            kept.append(index[tags[j]] if with_tags else -100)
            ids += sub
        return TagExample(ids + model.sep_ids, first, kept, len(words))

    def encode(self, model: HeadModel, dataset: Dataset, training: bool = True) -> list[TagExample]:
        check_fields(dataset, self.fields, "tagging")
        return [self._example(model, row, with_tags=True) for row in dataset.rows]

    def _logits(self, model: HeadModel, examples: list[TagExample], prefix) -> Tensor:
        return model.head(model.hidden([e.ids for e in examples], prefix))  # (b, t, n_tags)

    def loss_weight(self, examples: list[TagExample]) -> int:
        """The loss is a mean over labelled words (each word's first token)."""
        return sum(len(e.first) for e in examples)

    def loss(self, model: HeadModel, examples: list[TagExample], prefix) -> Tensor:
        logits = self._logits(model, examples, prefix)
        rows = torch.tensor([i for i, e in enumerate(examples) for _ in e.first])
        cols = torch.tensor([p for e in examples for p in e.first])
        gold = torch.tensor([t for e in examples for t in e.tags], device=logits.device)
        return F.cross_entropy(logits[rows, cols], gold)

    @torch.no_grad()
    def _tags(self, model: HeadModel, examples: list[TagExample], batch_size: int) -> list[list[str]]:
        prefix = model.cached_prefix()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
        out: list[list[str]] = [[] for _ in examples]
        for s in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[s : s + batch_size]]
            pred = self._logits(model, batch, prefix).argmax(-1).cpu()
            for i, e in zip(order[s : s + batch_size], batch, strict=True):
                tags = [self.labels[int(pred[batch.index(e), p])] for p in e.first]
                out[i] = tags + ["O"] * (e.n_words - len(tags))
        return out

    def predict(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[dict]:
        examples = [self._example(model, row, with_tags=False) for row in dataset.rows]
        result = []
        for row, tags in zip(dataset.rows, self._tags(model, examples, batch_size), strict=True):
            words = row.fields.get("tokens") or str(row.fields.get("text", "")).split()
            entities = [
                {"type": t, "start": a, "end": b + 1, "text": " ".join(words[a : b + 1])}
                for t, a, b in get_entities(tags)
            ]
            result.append({"tags": tags, "entities": entities})
        return result

    def evaluate(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> dict:
        gold, pred = self._gold_and_predicted(model, dataset, batch_size)
        return {**entity_scores(gold, pred), "n": len(gold)}

    def _gold_and_predicted(self, model: HeadModel, dataset: Dataset, batch_size: int):
        examples = self.encode(model, dataset, training=False)
        pred = self._tags(model, examples, batch_size)
        return [[str(t) for t in row.fields["tags"]] for row in dataset.rows], pred

    n_counts = 3  # entities found right, found, in the gold tags: micro F1 adds up over parts of the rows

    def counts(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[float]:
        gold, pred = self._gold_and_predicted(model, dataset, batch_size)
        true, found = set(get_entities(gold)), set(get_entities(pred))
        return [float(len(true & found)), float(len(found)), float(len(true))]

    def metric_of(self, counts: list[float]) -> float:
        return _prf(*counts)["f1"]

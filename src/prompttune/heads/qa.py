"""Extractive question answering: a span head (start/end logits) over the context's tokens.

Rows have ``context``, ``question`` and, to train or evaluate, ``answers`` (strings) with
``answer_starts`` (their character offsets; SQuAD's ``answer_start`` is read too). The question
comes first (an encoder reads ``[CLS] question [SEP] context [SEP]``; a decoder's context tokens
then see the question). Contexts longer than ``max_length`` are split into windows that overlap by
``stride`` tokens; the answer is the best-scoring span (start + end logit, at most
``max_answer_tokens``) over all windows. Exact match and F1 are computed as the official SQuAD v1.1
script computes them (lowercase, strip punctuation, articles and extra whitespace; max over the
gold answers; averaged, in percent).
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompttune.core.data import Dataset, Row
from prompttune.core.errors import DataError
from prompttune.heads.base import HeadKind, check_fields, register_kind
from prompttune.heads.model import HeadModel


# --- the official SQuAD v1.1 evaluation --------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict:
    """{"exact_match", "f1"} in percent, each the max over a question's gold answers, averaged."""
    em = sum(max(exact_match_score(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True))
    f1 = sum(max(f1_score(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True))
    n = len(predictions)
    return {"exact_match": 100.0 * em / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0, "n": n}


# --- windows -----------------------------------------------------------------------------------------
@dataclass
class Window:
    ids: list[int]
    row: int  # index of the row it came from
    context_start: int  # position in ids of the window's first context token
    offsets: list[tuple[int, int]]  # character span of each context token in the window
    start: int = -1  # answer's first/last token position in ids (-1: the answer is not in this window)
    end: int = -1


class SpanHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.linear(hidden)  # (b, t, 2)
        return logits[..., 0], logits[..., 1]


def answer_spans(row: Row) -> list[tuple[str, int]]:
    """(answer, character start) pairs, checked against the context."""
    context = str(row.fields["context"])
    answers = row.fields["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{row.where()}: field 'answers' must be a non-empty list of answer strings.")
    starts = row.fields.get("answer_starts", row.fields.get("answer_start"))
    if isinstance(starts, int):
        starts = [starts]
    out = []
    for i, a in enumerate(answers):
        a = str(a)
        start = starts[i] if isinstance(starts, list) and i < len(starts) else context.find(a)
        if not isinstance(start, int) or start < 0 or context[start : start + len(a)] != a:
            where = f"at answer_start {start}" if start is not None and start >= 0 else "anywhere"
            raise DataError(
                f"{row.where()}: answer {i + 1} {a!r} does not occur in the context {where}; fix the answer "
                "or its answer_starts (character offsets into the context)."
            )
        out.append((a, start))
    return out


@register_kind
class SpanKind(HeadKind):
    kind = "span"
    metric = "f1"
    fields = ("context", "question", "answers")

    def make_head(self, hidden_size: int) -> nn.Module:
        return SpanHead(hidden_size)

    @classmethod
    def matches(cls, fields: dict) -> bool:
        return "context" in fields and "question" in fields

    def _setting(self, name: str, default: int) -> int:
        return int(self.settings.get(name, default))

    def windows(self, model: HeadModel, row: Row, index: int, answer: tuple[str, int] | None) -> list[Window]:
        """The row's windows; with an answer, each window's answer tokens (if the window holds it)."""
        tok = model.backbone.tokenizer
        decoder = model.backbone.kind == "decoder"
        question = str(row.fields["question"]).strip()
        q_ids = model.backbone.tokenize(f"Question: {question}\nContext:" if decoder else question)
        q_ids = q_ids[: self._setting("max_question_tokens", 64)]
        lead = list(model.open_ids) + q_ids + list(model.sep_ids)
        enc = tok(str(row.fields["context"]), add_special_tokens=False, return_offsets_mapping=True)
        ctx_ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
        budget = min(self._setting("max_length", 384), model.max_row_length) - len(lead) - len(model.sep_ids)
        stride = min(self._setting("stride", 128), budget // 2)
        if budget < 8:
            raise DataError(f"{row.where()}: the question leaves no room for the context; shorten it.")
        out, first = [], 0
        while True:
            last = min(first + budget, len(ctx_ids))
            w = Window(lead + ctx_ids[first:last] + model.sep_ids, index, len(lead), offsets[first:last])
            if answer is not None:
                a_start, a_end = answer[1], answer[1] + len(answer[0])
                toks = [j for j, (s, e) in enumerate(w.offsets) if s < a_end and e > a_start]
                if toks and w.offsets[toks[0]][0] <= a_start and w.offsets[toks[-1]][1] >= a_end:
                    w.start, w.end = len(lead) + toks[0], len(lead) + toks[-1]
            out.append(w)
            if last >= len(ctx_ids):
                return out
            first = last - stride

    def encode(self, model: HeadModel, dataset: Dataset, training: bool = True) -> list[Window]:
        """Training windows: those holding the row's first answer (rows whose answer no window holds are skipped)."""
        check_fields(dataset, self.fields, "question answering")
        out = []
        for i, row in enumerate(dataset.rows):
            spans = answer_spans(row)
            if training:
                out += [w for w in self.windows(model, row, i, spans[0]) if w.start >= 0]
        return out

    def _logits(self, model: HeadModel, windows: list[Window], prefix) -> tuple[Tensor, Tensor]:
        start, end = model.head(model.hidden([w.ids for w in windows], prefix))  # (b, t) each
        ctx = torch.zeros(start.shape, dtype=torch.bool)
        for i, w in enumerate(windows):
            ctx[i, w.context_start : w.context_start + len(w.offsets)] = True
        ctx = ctx.to(start.device)
        return start.masked_fill(~ctx, float("-inf")), end.masked_fill(~ctx, float("-inf"))

    def loss(self, model: HeadModel, windows: list[Window], prefix) -> Tensor:
        start, end = self._logits(model, windows, prefix)
        s_gold = torch.tensor([w.start for w in windows], device=start.device)
        e_gold = torch.tensor([w.end for w in windows], device=start.device)
        return (F.cross_entropy(start, s_gold) + F.cross_entropy(end, e_gold)) / 2

    def best_span(self, start: Tensor, end: Tensor, w: Window) -> tuple[float, int, int]:
        """(score, first, last) context-token indices of the best span in one window."""
        n, c = len(w.offsets), w.context_start
        s, e = start[c : c + n], end[c : c + n]
        scores = s[:, None] + e[None, :]  # (n, n): start i, end j
        max_len = self._setting("max_answer_tokens", 30)
        i = torch.arange(n)
        valid = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_len)
        scores = scores.masked_fill(~valid, float("-inf"))
        best = int(scores.argmax())
        return float(scores.view(-1)[best]), best // n, best % n

    @torch.no_grad()
    def answers(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[dict]:
        windows = [w for i, row in enumerate(dataset.rows) for w in self.windows(model, row, i, None)]
        prefix = model.cached_prefix()
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
        best: dict[int, tuple[float, int, int, Window]] = {}
        for s in range(0, len(order), batch_size):
            batch = [windows[i] for i in order[s : s + batch_size]]
            start, end = (x.float().cpu() for x in self._logits(model, batch, prefix))
            for j, w in enumerate(batch):
                score, a, b = self.best_span(start[j].float(), end[j].float(), w)
                if w.row not in best or score > best[w.row][0]:
                    best[w.row] = (score, a, b, w)
        out = []
        for i, row in enumerate(dataset.rows):
            score, a, b, w = best[i]
            first, last = w.offsets[a][0], w.offsets[b][1]
            out.append({"answer": str(row.fields["context"])[first:last], "start": first, "score": score})
        return out

    def predict(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[dict]:
        check_fields(dataset, ("context", "question"), "question answering")
        return self.answers(model, dataset, batch_size)

    def evaluate(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> dict:
        check_fields(dataset, self.fields, "question answering")
        golds = [[a for a, _ in answer_spans(row)] for row in dataset.rows]
        preds = self.answers(model, dataset, batch_size)
        return squad_scores([p["answer"] for p in preds], golds)

    n_counts = 2  # F1 (percent) summed over the questions, questions

    def counts(self, model: HeadModel, dataset: Dataset, batch_size: int = 32) -> list[float]:
        report = self.evaluate(model, dataset, batch_size)
        return [report["f1"] * report["n"], float(report["n"])]

    def metric_of(self, counts: list[float]) -> float:
        total, n = counts
        return total / n if n else 0.0

"""What the discrete prompt searches (pez.py, gcg.py) share: the batches they draw, the selection rows that pick the
best prompt they visit, and the result.

A search holds a prompt-tuning task whose soft table is what the model reads; it loads real token embeddings
into that table, and every ``eval_every`` steps the tokens it holds are scored on selection rows (rows it does not
train on). The best tokens seen (accuracy, then lower loss) are kept, the start included, so a search never
returns a prompt that scored worse on those rows than the one it began from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.prompt_task import PromptTask
from prompttune.readable.vocab import Vocabulary
from prompttune.train import Callback


@dataclass
class SearchResult:
    ids: dict[int, list[int]]  # slot index -> the best tokens' ids
    best_step: int
    selection_accuracy: float
    selection_loss: float
    initial_accuracy: float
    lr: float | None  # pez's learning rate; None for searches without one
    seconds: float
    history: list[dict] = field(default_factory=list)
    start_ids: dict[int, list[int]] = field(default_factory=dict)  # slot index -> the start's tokens (step 0)


def start_from_tokens(task: PromptTask, vocab: Vocabulary) -> None:
    """Set the task's table to its nearest candidate tokens: a search then starts from real tokens, not a raw vector."""
    with torch.no_grad():
        task.model.method.load_table(vocab.embeddings(vocab.project(task.model.method.table())))
    task.model.clear_cache()


def batch_stream(n: int, size: int, seed: int) -> Iterator[list[int]]:
    """Row indices in seeded shuffled batches, epoch after epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n, size):
            yield order[start : start + size]


def load_tokens(task: PromptTask, vocab: Vocabulary, ids: Tensor) -> None:
    task.model.method.load_table(vocab.embeddings(ids))
    task.model.clear_cache()


@torch.no_grad()
def confirmed(task: PromptTask, vocab: Vocabulary, objective, current: Tensor, swap: Tensor, batch: list[int]) -> bool:
    """Whether ``swap`` also lowers the loss on a fresh batch. The best of many swaps on one batch is chosen partly
    for that batch's luck (it nearly always beats the current tokens there, whether or not it helps); on rows it
    was not chosen on, its gain is an unbiased estimate."""
    losses = []
    for ids in (current, swap):
        load_tokens(task, vocab, ids)
        losses.append(float(objective.batch_loss(batch)))
    return losses[1] < losses[0]


class Selection:
    """Scores token sets on the selection rows and keeps the best; reports to the callbacks."""

    def __init__(self, task: PromptTask, objective, total: int, callbacks: Sequence[Callback] = ()):
        self.task, self.objective, self.total, self.callbacks = task, objective, total, callbacks
        self.t0 = time.perf_counter()
        self.history: list[dict] = []
        self.best: tuple[float, float, int, Tensor] | None = None  # (accuracy, -loss, step, ids)
        self.start: Tensor | None = None  # the first tokens considered: where the search began
        self._scores: dict[tuple[int, ...], tuple[float, float]] = {}  # tokens scored already (none changed)

    def score(self) -> tuple[float, float]:
        logp = self.task.model.score(self.objective.val, calibrate=False)
        acc = float((logp.argmax(-1) == self.objective.y_val).float().mean())
        return acc, float(F.nll_loss(logp, self.objective.y_val))

    def consider(self, step: int, ids: Tensor, **extra) -> float:
        """Score the tokens the task holds (``ids``), keep them if best; returns their accuracy. Tokens scored
        before are not scored again (the same rows, the same prompt)."""
        key = tuple(ids.tolist())
        if self.start is None:
            self.start = ids.clone()
        if key not in self._scores:
            self._scores[key] = self.score()
        acc, loss = self._scores[key]
        self.history.append({"step": step, "accuracy": acc, "loss": loss} | extra)
        if self.best is None or (acc, -loss) > self.best[:2]:
            self.best = (acc, -loss, step, ids.clone())
        if step:
            event = {"step": step, "total": self.total, "metric": "accuracy", "val": acc, "best_val": self.best[0]}
            for cb in self.callbacks:
                cb.on_validation(event)
        return acc

    def step_event(self, event: dict) -> None:
        for cb in self.callbacks:
            cb.on_step({"total": self.total} | event)

    def finish(self, vocab: Vocabulary, lr: float | None) -> SearchResult:
        """The task ends holding the best tokens; their ids per slot, in the table's slot order."""
        assert self.best is not None, "consider() the start before finishing"
        load_tokens(self.task, vocab, self.best[3])
        return SearchResult(
            ids=self._per_slot(self.best[3]),
            best_step=self.best[2],
            selection_accuracy=self.best[0],
            selection_loss=-self.best[1],
            initial_accuracy=self.history[0]["accuracy"],
            lr=lr,
            seconds=time.perf_counter() - self.t0,
            history=self.history,
            start_ids=self._per_slot(self.start),
        )

    def _per_slot(self, ids: Tensor) -> dict[int, list[int]]:
        flat, per_slot, start = ids.tolist(), {}, 0
        for s in self.task.model.method.slots:
            per_slot[s.index] = flat[start : start + s.size]
            start += s.size
        return per_slot

"""The multi-task objective: task-balanced sampling (temperature-scaled), each task's loss through its own
template and verbalizer, validation per task, and the mean of the tasks' accuracies as the Trainer's metric."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.batches import epoch_batches, grouped_batches
from prompttune.core.errors import DataError
from prompttune.label_words.verbalizer_objective import VerbalizerObjective
from prompttune.multitask.distill import distill_loss
from prompttune.multitask.joint import joint_label_scores, joint_prefixes
from prompttune.multitask.specs import TaskData
from prompttune.multitask.view import Stage
from prompttune.prefix import step_prefixes
from prompttune.prompt_task import PromptTask

MAX_TEMPERATURE = 100.0  # beyond this sampling is uniform over tasks to many digits
BATCHINGS = ("mixed", "task")  # a batch mixes tasks (the default), or holds one task's rows


def task_shares(sizes: list[int], temperature: float) -> list[float]:
    """Each task's share of the sampled rows: proportional to n_k ** (1 / T) (T=1: as the rows come; large T:
    uniform over tasks), as in T5 / mT5 temperature-scaled mixing."""
    if not (math.isfinite(temperature) and 1.0 <= temperature <= MAX_TEMPERATURE):
        raise DataError(f"--temperature {temperature}: must be between 1 (proportional) and {MAX_TEMPERATURE:g}.")
    weights = [n ** (1.0 / temperature) for n in sizes]
    return [w / sum(weights) for w in weights]


def sample_rows(sizes: list[int], temperature: float, seed: int) -> list[tuple[int, int]]:
    """An epoch of (task, row) pairs: as many as all tasks' rows, shared out by ``task_shares``; a task's rows
    are taken in a seeded order, cycled when its share is larger than its rows."""
    shares = task_shares(sizes, temperature)
    total = sum(sizes)
    rng = random.Random(seed)
    out = []
    for k, (n, share) in enumerate(zip(sizes, shares, strict=True)):
        count = max(1, round(total * share))
        order = list(range(n))
        rng.shuffle(order)
        out += [(k, order[i % n]) for i in range(count)]
    return out


def check_batching(batching: str) -> str:
    if batching not in BATCHINGS:
        raise DataError(f"--batching {batching!r}: must be one of {', '.join(BATCHINGS)}.")
    return batching


class MixtureObjective:
    """The Objective the Trainer trains a pack with. Its examples are the sampled (task, row) pairs.

    With ``batching="mixed"`` (the default) a batch mixes tasks (as T5-style mixing does): the tasks' prefixes
    are computed once per step, together in one pass (``joint.joint_prefixes``), and the rows of all tasks run
    in one forward pass, each over its own task's prefix (``joint.joint_label_scores``; task by task where rows
    split off their text), each read through its own template and verbalizer. With ``"task"`` each batch holds
    one task's rows (the tasks' batches shuffled together in their shares), so a step computes one prefix and
    pads to one task's lengths, as a single-task step does: faster, but each step then pulls a shared prompt
    towards one task (measured in docs/multitask.md). The loss is the mean over the batch's rows of each row's
    cross-entropy, plus ``distill_weight`` x KL(teacher || pack) for a row whose task has teacher probabilities
    (``teachers``: task index -> one row of label probabilities per training row; distill.py)."""

    metric = "mean accuracy"
    # the loss is a mean over rows: the Trainer may split a step into parts of this many padded tokens
    micro_batch_tokens = getattr(VerbalizerObjective, "micro_batch_tokens", None)

    def __init__(
        self,
        tasks: list[PromptTask],
        data: list[TaskData],
        stage: Stage,
        temperature: float,
        seed: int,
        batching: str = "mixed",
        teachers: dict[int, Tensor] | None = None,
        distill_weight: float = 1.0,
    ):
        self.tasks, self.data, self.trainable = tasks, data, stage
        self.teachers, self.distill_weight = dict(teachers or {}), distill_weight
        self.batching = check_batching(batching)
        self.parts = [VerbalizerObjective(t.model, d.train, d.val) for t, d in zip(tasks, data, strict=True)]
        self.val_rows = sum(p.val_rows for p in self.parts)  # the mean accuracy's standard error, as if one pool
        self.pairs = sample_rows([len(d.train) for d in data], temperature, seed)
        self.lengths = [len(self.parts[k].train.ids[i]) for k, i in self.pairs]
        self.last_val: dict[str, float] = {}

    def epoch_batches(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        if self.batching == "mixed":
            return epoch_batches(self.lengths, batch_size, seed, epoch)
        groups: dict[int, list[int]] = {}
        for j, (k, _) in enumerate(self.pairs):
            groups.setdefault(k, []).append(j)
        return grouped_batches(list(groups.values()), self.lengths, batch_size, seed, epoch)

    def batch_loss(self, batch: list[int]) -> Tensor:
        by_task: dict[int, list[int]] = {}
        for j in batch:
            k, i = self.pairs[j]
            by_task.setdefault(k, []).append(i)
        models = [self.tasks[k].model for k in by_task]
        prefixes = joint_prefixes(models)  # the tasks' prefixes in one pass (or the step's, computed once)
        ids = [[self.parts[k].train.ids[i] for i in rows] for k, rows in by_task.items()]
        groups = list(zip(models, ids, prefixes, strict=True))
        scores = joint_label_scores(groups)  # all tasks' rows in one forward pass, where they can be joined
        if scores is None:
            scores = [model.label_scores(ids, prefix) for model, ids, prefix in groups]
        total = torch.zeros(())
        for (k, rows), s in zip(by_task.items(), scores, strict=True):
            total = total + F.cross_entropy(s, self.parts[k].y_train[rows].to(s.device), reduction="sum")
            if k in self.teachers:
                total = total + self.distill_weight * distill_loss(s, self.teachers[k][rows])
        return total / len(batch)

    @contextmanager
    def prefix_once(self, batch: list[int]) -> Iterator[None]:
        """A step taken in parts (``Trainer``'s micro-batches): each task of the step computes its prefix once."""
        models = [self.tasks[k].model for k in sorted({self.pairs[j][0] for j in batch})]
        models = [m for m in models if not m.in_step]  # nested: the outer step owns their prefixes
        with step_prefixes(models, joint_prefixes(models)):
            yield

    @torch.no_grad()
    def validate(self) -> float:
        self.last_val = {d.name: part.validate() for d, part in zip(self.data, self.parts, strict=True)}
        return sum(self.last_val.values()) / len(self.last_val)

    @torch.no_grad()
    def validate_shard(self, rank: int, world: int, reduce) -> float:
        """``validate`` in a data-parallel run: each task's rows split over the ranks, its counts summed."""
        parts = zip(self.data, self.parts, strict=True)
        self.last_val = {d.name: part.validate_shard(rank, world, reduce) for d, part in parts}
        return sum(self.last_val.values()) / len(self.last_val)

    def clear_cache(self) -> None:
        for t in self.tasks:
            t.model.clear_cache()

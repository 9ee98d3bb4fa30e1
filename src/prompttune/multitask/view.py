"""A task's soft tokens read from parameters several tasks share, and the strategies that share them.

Every task of a pack is an ordinary ``PromptTask`` (its template, verbalizer and compiled prefix) whose method
is swapped for a ``PromptView``: its soft slots read rows of a table the strategy computes from the pack's
parameters (``spot``: one shared prompt; ``mpt``: the shared prompt times the task's rank-one factors;
``progressive``: the task's own prompt with earlier tasks' frozen prompts behind it at the first slot sized by
``--num-virtual-tokens``; ``sequential``: one prompt). At save time each task's view is written out as the plain
prompt-tuning table it amounts to, so a pack's task loads and predicts exactly as a single-task artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset
from prompttune.core.errors import DataError
from prompttune.core.template import SoftSlot
from prompttune.distributed.context import current
from prompttune.methods import SoftPromptMethod
from prompttune.prompt_task import PromptTask
from prompttune.task import Data, as_dataset


def offsets(slots: list[SoftSlot]) -> dict[int, tuple[int, int]]:
    """{slot index: (start, end)} rows of a table laid out slot after slot (as prompt tuning lays it out)."""
    out, start = {}, 0
    for s in slots:
        out[s.index] = (start, start + s.size)
        start += s.size
    return out


class PromptView(SoftPromptMethod):
    """Soft tokens read from ``table()`` (the task's own-shaped prompt); ``stack`` rows (frozen earlier prompts)
    follow the task's own rows at their slot. Not registered: only multitask builds it; it owns no parameter."""

    name = "prompt-view"

    def __init__(
        self,
        base: SoftPromptMethod,
        own_slots: list[SoftSlot],
        table: Callable[[], Tensor],
        stack: dict[int, Tensor] | None = None,
    ):
        super().__init__(base.config, None, base.slots, {})
        self._table, self._own = table, offsets(own_slots)
        self._stack = {k: v.detach().clone() for k, v in (stack or {}).items()}
        for s in self.slots:
            start, end = self._own[s.index]
            extra = self._stack[s.index].shape[0] if s.index in self._stack else 0
            if end - start + extra != s.size:
                raise DataError(
                    f"soft slot {s.index}: {end - start} own + {extra} stacked rows, but it holds {s.size}."
                )

    def slot_embeddings(self, slot: SoftSlot) -> Tensor:
        start, end = self._own[slot.index]
        rows = self._table()[start:end]
        if slot.index in self._stack:
            rows = torch.cat([rows, self._stack[slot.index].to(rows.dtype)])
        return rows

    def full_table(self) -> Tensor:
        """The (soft tokens, d) table a plain prompt-tuning method with these slots would hold."""
        with torch.no_grad():
            return torch.cat([self.slot_embeddings(s) for s in self.slots]).detach().clone()

    def trainable_state(self) -> dict[str, Tensor]:
        return {}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise DataError("a pack's task view holds no parameters of its own; load the pack instead.")


def use_view(task: PromptTask, own_slots: list[SoftSlot], table: Callable[[], Tensor], stack=None) -> PromptView:
    """Swap the task's method for a view onto shared parameters (its compiled template and layout stay)."""
    view = PromptView(task.model.method, own_slots, table, stack)
    task.model.method = view
    task.model.clear_cache()
    return view


def plain_table(task: PromptTask) -> Tensor:
    """A fresh prompt-tuning task's table (its init): what a strategy starts its parameters from."""
    method = task.model.method
    if not hasattr(method, "table") or method.table() is None:
        raise DataError("multi-task training needs prompt tuning's table of soft tokens.")
    return method.table().detach().float().clone()


class Strategy:
    """How a pack's tasks share parameters: ``create`` them from the tasks' initial tables, then ``table(name)``
    is a task's own-shaped prompt. Keys name parameters (no '.'); ``task_params`` those only one task uses."""

    name: ClassVar[str]
    stacks: ClassVar[bool] = False  # each new task's prompt goes before the earlier tasks' frozen prompts
    shares: ClassVar[bool] = True  # tasks read one prompt (their templates need the same soft slots)
    STRATEGIES: ClassVar[dict[str, type[Strategy]]] = {}

    def __init__(self) -> None:
        self.params: dict[str, nn.Parameter] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Strategy.STRATEGIES[cls.name] = cls

    @classmethod
    def get(cls, name: str, flag: str = "--method", kinds: tuple[str, ...] | None = None) -> Strategy:
        choices = kinds or tuple(cls.STRATEGIES)
        if name not in choices:
            raise DataError(f"{flag} {name}: unknown; choose one of {', '.join(choices)}.")
        return cls.STRATEGIES[name]()

    def add(self, name: str, init: Tensor) -> None:
        """Make (or reuse) the parameters task ``name`` reads; ``init`` is its fresh table."""
        raise NotImplementedError

    def table(self, name: str) -> Tensor:
        raise NotImplementedError

    def keys(self, name: str | None = None) -> list[str]:
        """Parameters trained with task ``name`` (None: with every task at once)."""
        return list(self.params)

    def task_params(self, name: str) -> int:
        """Parameters only this task uses."""
        return 0

    @property
    def shared_params(self) -> int:
        return self.params["shared"].numel() if "shared" in self.params else 0

    def load(self, weights: dict[str, Tensor]) -> None:
        for k, v in weights.items():
            self.params[k] = nn.Parameter(v.float().clone())

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}


class Spot(Strategy):
    """SPoT (Vu et al. 2022): one prompt, trained on the mixture of tasks."""

    name = "spot"

    def add(self, name: str, init: Tensor) -> None:
        if "shared" not in self.params:
            self.params["shared"] = nn.Parameter(init.clone())
        elif self.params["shared"].shape != init.shape:
            raise DataError(
                f"--task {name}: its template has {init.shape[0]} soft tokens, the first task's "
                f"{len(self.params['shared'])}; tasks sharing a prompt need templates with the same soft slots."
            )

    def table(self, name: str) -> Tensor:
        return self.params["shared"]


class Sequential(Spot):
    """One prompt, trained task after task (the forgetting baseline of continual learning)."""

    name = "sequential"


class Mpt(Spot):
    """Multitask prompt tuning (Wang et al. 2023): task k reads P* (elementwise) u_k v_k^T, with P* shared and
    u_k (soft tokens), v_k (width) its own rank-one factors, both starting at ones (the task starts at P*)."""

    name = "mpt"

    def add(self, name: str, init: Tensor) -> None:
        super().add(name, init)
        self.params[f"u_{name}"] = nn.Parameter(torch.ones(init.shape[0]))
        self.params[f"v_{name}"] = nn.Parameter(torch.ones(init.shape[1]))

    def table(self, name: str) -> Tensor:
        return self.params["shared"] * torch.outer(self.params[f"u_{name}"], self.params[f"v_{name}"])

    def task_params(self, name: str) -> int:
        return self.params[f"u_{name}"].numel() + self.params[f"v_{name}"].numel()


class Progressive(Strategy):
    """Progressive prompts (Razdaibiedina et al. 2023): each task its own prompt; earlier ones frozen."""

    name = "progressive"
    stacks = True
    shares = False

    def add(self, name: str, init: Tensor) -> None:
        self.params[f"own_{name}"] = nn.Parameter(init.clone())

    def table(self, name: str) -> Tensor:
        return self.params[f"own_{name}"]

    def keys(self, name: str | None = None) -> list[str]:
        return [f"own_{name}"] if name is not None else list(self.params)

    def task_params(self, name: str) -> int:
        return self.params[f"own_{name}"].numel()


class Stage(nn.Module):
    """What one Trainer run trains: the strategy's parameters for a task (or all tasks), by reference."""

    def __init__(self, strategy: Strategy, keys: list[str]):
        super().__init__()
        self.params = nn.ParameterDict({k: strategy.params[k] for k in keys})
        for p in strategy.params.values():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"prompt": list(self.params.values())}

    @property
    def lr_scales(self) -> dict[str, float]:
        return {}

    def trainable_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)


def materialize(backbone: Backbone, view_task: PromptTask, n_virtual: int, init: str) -> PromptTask:
    """The plain prompt-tuning task a view amounts to: same template and verbalizer, the view's table."""
    view = view_task.model.method
    task = PromptTask.create(
        backbone,
        view_task.labels,
        "prompt-tuning",
        {"num_virtual_tokens": n_virtual, "init": init},
        view_task.model.template,
        verbalizer=view_task.model.verbalizer,
    )
    task.model.method.load_table(view.full_table())
    return task


def accuracy(task: PromptTask, data: Data) -> float:
    """``task``'s accuracy on ``data``; in a data-parallel run each rank scores every ``world``-th row and the
    counts are summed (the same value on every rank, and as one process's)."""
    ds = as_dataset(data)
    dist = current()
    if dist is None:
        return float(task.evaluate(ds)["accuracy"])
    part = Dataset(ds.rows[dist.rank :: dist.world], ds.source)
    counts = torch.zeros(2, dtype=torch.float64)
    if part.rows:
        counts[0], counts[1] = round(task.evaluate(part)["accuracy"] * len(part)), len(part)
    right, n = dist.all_reduce_sum(counts).tolist()
    return right / n if n else 0.0

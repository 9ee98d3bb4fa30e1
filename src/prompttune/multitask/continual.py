"""`continual` as a library verb: learn tasks one after another on a frozen backbone.

``progressive`` (Razdaibiedina et al. 2023): each task adds its own prompt; at the template's first ``[soft]``
slot (the one sized by ``--num-virtual-tokens``) it stands before the frozen prompts of every earlier task,
newest first. Earlier prompts are never trained again, so every earlier task predicts exactly (bitwise) as it
did. ``sequential``: one prompt trained on each task in turn (the forgetting baseline). After each task every
task so far is evaluated on its held-out rows; the matrix, average accuracy, BWT and FWT go to DIR/report.*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from prompttune.core import artifact, atomic
from prompttune.core.backbone import Backbone
from prompttune.core.errors import DataError
from prompttune.distributed.context import init_from_env, main_writes
from prompttune.label_words.verbalizer_objective import VerbalizerObjective
from prompttune.methods import METHODS
from prompttune.multitask.multi import params_summary
from prompttune.multitask.pack import PackTask, save_pack
from prompttune.multitask.report import continual_metrics, write_report
from prompttune.multitask.specs import (
    TaskData,
    check_form,
    load_tasks,
    parse_specs,
    task_templates,
    unused_field_warnings,
)
from prompttune.multitask.view import Stage, Strategy, accuracy, materialize, offsets, plain_table, use_view
from prompttune.prompt_task import PromptTask
from prompttune.scorer import MAX_VIRTUAL_TOKENS
from prompttune.train import Callback, TrainConfig, Trainer

CONTINUAL_METHODS = ("progressive", "sequential")
PACK = "pack"  # the artifact inside DIR


def is_continual_dir(path: Path) -> bool:
    """Whether a folder is a ``continual`` output (its report and pack), which ``--overwrite`` may replace."""
    return (path / "report.json").is_file() and artifact.is_artifact(path / PACK)


def growing_slot(data: TaskData, base: PromptTask, wide: PromptTask) -> int:
    """The index of the one soft slot whose size follows ``--num-virtual-tokens`` (where earlier prompts go)."""
    sizes = {s.index: s.size for s in base.model.method.slots}
    grown = [s.index for s in wide.model.method.slots if s.size != sizes[s.index]]
    if len(grown) != 1:
        raise DataError(
            f"--task {data.name}: progressive prompts need exactly one [soft] slot sized by --num-virtual-tokens "
            f"in the task's template; it has {len(grown)}."
        )
    return grown[0]


class Learner:
    """The state of a continual run: the strategy's parameters and, per task, its view and its layout."""

    def __init__(
        self,
        backbone: Backbone,
        strategy: Strategy,
        n_virtual: int,
        init: str,
        seed: int,
        templates: dict | None = None,
    ):
        self.backbone, self.strategy, self.n, self.init, self.seed = backbone, strategy, n_virtual, init, seed
        self.templates = templates or {}  # task name -> built-in template name (default: as ``train`` picks)
        self.views: dict[str, PromptTask] = {}
        self.size: dict[str, int] = {}  # --num-virtual-tokens each task's view is compiled with
        self.own_rows: dict[str, tuple[int, int]] = {}  # rows of a task's own table at its growing slot

    def fresh(self, data: TaskData, n_virtual: int | None = None) -> PromptTask:
        config = {"num_virtual_tokens": n_virtual or self.n, "init": self.init}
        template = self.templates.get(data.name)
        return PromptTask.for_data(self.backbone, data.train, "prompt-tuning", config, self.seed, template)

    def add(self, data: TaskData, base: PromptTask) -> PromptTask:
        """Task ``data``'s view: its own prompt (progressive: with the earlier prompts stacked behind it)."""
        name, strategy = data.name, self.strategy
        strategy.add(name, plain_table(base))
        own_slots = base.model.method.slots
        view, size, stack = base, self.n, None
        if strategy.stacks:
            size = self.n * (len(self.views) + 1)
            wide = self.fresh(data, size if self.views else 2 * self.n)  # the first task's only finds the slot
            slot = growing_slot(data, base, wide)
            self.own_rows[name] = offsets(own_slots)[slot]
            if self.views:
                earlier = [strategy.table(n)[slice(*self.own_rows[n])].detach() for n in reversed(self.views)]
                view, stack = wide, {slot: torch.cat(earlier)}
        use_view(view, own_slots, lambda: strategy.table(name), stack)
        self.views[name], self.size[name] = view, size
        return view

    def plain(self, name: str) -> PromptTask:
        return materialize(self.backbone, self.views[name], self.size[name], self.init)


def learn_continual(
    task_specs: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    method: str = "progressive",
    limit_per_task: int | None = None,
    num_virtual_tokens: int = 16,
    init: str = "labels",
    form: str = "auto",
    config: TrainConfig | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    dtype: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    on_task: Callable[[str, int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[PackTask | None, dict]:
    """Learn the tasks (``NAME=FILE`` each) in order; write DIR/pack (every task, by name) and DIR/report.*.

    Returns (the pack loaded back, or None without ``out_dir``; the report, as DIR/report.json holds it).
    ``on_task(name, j, T)`` is called before task j of T trains; ``on_warning(text)`` before the first, for each
    warning (also in the report's ``warnings``).
    """
    config = (config or TrainConfig()).with_lr(METHODS["prompt-tuning"].default_lr)
    strategy = Strategy.get(method, kinds=CONTINUAL_METHODS)
    specs = parse_specs(list(task_specs))
    check_form(form)
    if strategy.stacks and num_virtual_tokens * len(specs) > MAX_VIRTUAL_TOKENS:
        raise DataError(
            f"--num-virtual-tokens {num_virtual_tokens} x {len(specs)} tasks: the last task's prompts would be "
            f"{num_virtual_tokens * len(specs)} soft tokens, more than the limit of {MAX_VIRTUAL_TOKENS}; use fewer "
            "virtual tokens or tasks."
        )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        atomic.check_output_dir(out, "--out", is_continual_dir, "continual-learning output", overwrite)
    data = load_tasks(specs, limit_per_task, config.seed)
    warnings = unused_field_warnings(data)
    for warning in warnings if on_warning else ():
        on_warning(warning)
    dist = init_from_env(device)  # under a launcher: join the run (each rank trains its part of every batch)
    if backbone is None:
        backbone = Backbone.load(model, dtype=dtype, device=device)
    templates = task_templates(backbone, data, form, strategy.shares)
    learner = Learner(backbone, strategy, num_virtual_tokens, init, config.seed, templates)
    names = [d.name for d in data]
    matrix: list[list[float | None]] = []
    before, baseline, runs = [], [], []
    for j, d in enumerate(data):
        base = learner.fresh(d)
        baseline.append(accuracy(base, d.val))
        view = learner.add(d, base)
        before.append(accuracy(learner.plain(d.name), d.val))
        if on_task:
            on_task(d.name, j, len(data))
        objective = VerbalizerObjective(view.model, d.train, d.val)
        objective.trainable = Stage(strategy, strategy.keys(d.name))
        result = Trainer(objective, config, None, callbacks, d.fingerprint).fit()
        runs.append({"task": d.name, **{k: v for k, v in result.metrics().items() if k != "history"}})
        plain = {n: learner.plain(n) for n in names[: j + 1]}
        matrix.append(
            [accuracy(plain[n], e.val) for n, e in zip(names[: j + 1], data, strict=False)]
            + [None] * (len(data) - j - 1)
        )
    report = {
        "method": method,
        "tasks": names,
        "matrix": matrix,
        "before": before,
        "baseline": baseline,
        **continual_metrics(matrix, before, baseline),
        **params_summary(strategy, names),
        "n_train": {d.name: len(d.train) for d in data},
        "n_val": {d.name: len(d.val) for d in data},
        "training": config.to_dict(),
        "runs": runs,
        "processes": dist.world if dist is not None else 1,
        "warnings": warnings,
    }
    if out is None:
        return None, report
    task_info = {
        d.name: {
            "val_accuracy": matrix[-1][i],
            "data": {
                "train": d.train.source,
                "train_hash": d.train.fingerprint(),
                "n_train": len(d.train),
                "val": "seeded 10% of train",
                "val_hash": d.val.fingerprint(),
                "n_val": len(d.val),
            },
        }
        for i, d in enumerate(data)
    }
    pack_info = {"num_virtual_tokens": num_virtual_tokens, "init": init, "order": names}

    def fill(tmp: Path) -> None:
        save_pack(tmp / PACK, backbone, method, plain, strategy.state(), pack_info, task_info, {"continual": report})
        write_report(tmp, report | {"pack": str(out / PACK)})

    main_writes(dist, lambda: atomic.write_dir(out, fill))  # the others then read the pack rank 0 wrote
    report["pack"] = str(out / PACK)
    return PackTask.from_artifact(out / PACK, *artifact.read(out / PACK), backbone), report

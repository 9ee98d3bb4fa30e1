"""Task specs: ``--task NAME=FILE`` items read, named, bounded and split, before any backbone loads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.backbone import Backbone
from prompttune.core.data import Dataset, infer_fields, load_rows, unused_fields_warning
from prompttune.core.errors import DataError
from prompttune.prompt_task import default_template
from prompttune.task import split_validation

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
FORMS = ("auto", "early", "late")
MAX_TASKS = 32  # tasks in one pack at most: each keeps its own compiled template, prompt view and validation rows


@dataclass
class TaskData:
    """One task's rows: its name, its training rows and its held-out rows (carved as ``train`` carves them)."""

    name: str
    train: Dataset
    val: Dataset

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.train.fingerprint()}+{self.val.fingerprint()}"


def check_name(name: str, flag: str = "--task") -> str:
    if not NAME_RE.match(name):
        raise DataError(
            f"{flag} {name!r}: a task name is 1-64 letters, digits, '_' or '-', starting with a letter or digit."
        )
    return name


def parse_specs(items: list[str] | None, flag: str = "--task") -> list[tuple[str, Path]]:
    """['sst2=data/sst2.jsonl', ...] -> [(name, path)], names checked and unique, files present."""
    if not items:
        raise DataError(f"{flag}: give at least one task as NAME=FILE (e.g. {flag} sst2=train.jsonl).")
    if len(items) > MAX_TASKS:
        raise DataError(f"{flag}: {len(items)} tasks, more than the limit of {MAX_TASKS}; use fewer tasks.")
    out: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for item in items:
        name, sep, file = item.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise DataError(f"{flag} {item!r}: expected NAME=FILE, e.g. {flag} sst2=data/sst2.jsonl.")
        check_name(name, flag)
        if name in seen:
            raise DataError(f"{flag} {name}: the name is given twice; every task needs its own name.")
        seen.add(name)
        out.append((name, Path(file)))
    return out


def load_tasks(
    specs: list[tuple[str, Path]], limit_per_task: int | None, seed: int, flag: str = "--limit-per-task"
) -> list[TaskData]:
    """Each task's file read once, its first ``limit_per_task`` rows kept, a seeded 10% held out."""
    if limit_per_task is not None and limit_per_task < 4:
        raise DataError(f"{flag} {limit_per_task}: must be at least 4 (a validation split is carved from each task).")
    tasks = []
    for name, path in specs:
        rows = load_rows(path).limit(limit_per_task)
        train, val = split_validation(rows, 0.1, seed)
        tasks.append(TaskData(name, train, val))
    return tasks


def task_index(names: list[str], name: str, where: str, flag: str = "--task") -> int:
    """The position of a task by name; an unknown name is an error listing the known ones."""
    if name not in names:
        raise DataError(f"{flag} {name}: {where} has no such task; it has {', '.join(names)}.")
    return names.index(name)


def check_form(form: str) -> str:
    if form not in FORMS:
        raise DataError(f"--form {form}: unknown; choose one of {', '.join(FORMS)}.")
    return form


def unused_field_warnings(data: list[TaskData]) -> list[str]:
    """A warning for each task whose rows carry text fields its built-in template never shows the model."""
    remedy = "write it into the fields the template reads (packs take the built-in templates)"
    return [w for d in data if (w := unused_fields_warning(d.train, f"task {d.name}", remedy)) is not None]


def task_templates(backbone: Backbone, data: list[TaskData], form: str, uniform: bool) -> dict[str, str]:
    """Each task's built-in template for its rows' fields: ``early`` (soft tokens before the input), ``late``
    (after it) or ``auto`` (as ``train`` picks: late for long rows). ``uniform`` (tasks share one prompt, which
    needs one layout of soft slots): where ``auto`` picks both forms, every task gets the early one."""
    names = {}
    for d in data:
        auto = default_template(backbone, d.train, infer_fields(d.train))
        early = auto.removesuffix("-late")
        names[d.name] = {"auto": auto, "early": early, "late": f"{early}-late"}[check_form(form)]
    if uniform and len({n.endswith("-late") for n in names.values()}) > 1:
        names = {k: n.removesuffix("-late") for k, n in names.items()}
    return names


def shape_mismatch(what: str, source: tuple[int, ...], own: tuple[int, ...]) -> DataError:
    """The error of a transfer whose source prompt and new prompt differ in shape, with how to line them up."""
    return DataError(
        f"--init-from: {what} is {source[0]} soft tokens x {source[1]}, the new task's prompt {own[0]} x {own[1]}; "
        "use a template with the same soft slots as the pack's tasks, and its --num-virtual-tokens. A pack's "
        "templates follow train-multi's --form: 'auto' gives one task with long rows the late form "
        "(classify-late); --form early gives --template classify's (classify-pair's for pairs)."
    )

"""Transfer: a new task's prompt starts from a pack's (SPoT's and MPT's transfer to a target task).

``--source-task shared`` (the default where the pack has one: ``spot``, ``mpt``, ``sequential``) starts from
the shared prompt; ``--source-task NAME`` from that task's own prompt (``mpt``: P* times its factors;
``progressive``: its own prompt, without the earlier ones stacked behind it); ``--source-task mixture``: ATTEMPT's
input-dependent mixture of the pack's source prompts (``attempt.py``).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from prompttune.core import artifact
from prompttune.core.errors import ArtifactError, DataError
from prompttune.multitask.attempt import MIXTURE, mixture_sources, mixture_task
from prompttune.multitask.specs import shape_mismatch, task_index
from prompttune.task import Task

SHARED = "shared"


def source_prompt(init_from: str | Path, source_task: str | None = None) -> tuple[Tensor, dict, str]:
    """(the table to start from, the pack's manifest, a description) — read and checked before anything loads."""
    path = Path(init_from)
    manifest, weights = artifact.read(path)
    if source_task == MIXTURE:
        sources, names = mixture_sources(path, manifest, weights)
        return sources, manifest, f"a mixture of the {len(names)} source prompts of {path}"
    pack = manifest.get("pack")
    if not pack:
        raise ArtifactError(
            f"--init-from {path}: a single-task artifact, not a pack; make one with `prompttune train-multi` or "
            "`prompttune continual`."
        )
    names = [t["name"] for t in pack["tasks"]]
    which = source_task or SHARED
    if which == SHARED:
        if "params.shared" not in weights:
            raise DataError(
                f"--source-task shared: the {pack['strategy']} pack {path} has no shared prompt; name one of its "
                f"tasks with --source-task ({', '.join(names)})."
            )
        return weights["params.shared"], manifest, f"the shared prompt of {path}"
    task_index(names, which, f"pack {path}", "--source-task")
    table = weights.get(f"params.own_{which}", weights.get(f"tasks.{which}"))
    if table is None:
        raise ArtifactError(f"{path}: the weights of task {which} are missing; train the pack again.")
    return table, manifest, f"task {which} of {path}"


def init_from_pack(task: Task, init_from: str | Path, source_task: str | None = None) -> str:
    """Set a new task's prompt to the pack's (before any step); returns what it started from."""
    table, manifest, what = source_prompt(init_from, source_task)
    b = task.backbone
    artifact.check_backbone(Path(init_from), manifest, b.model_id, b.fingerprint())
    method = getattr(task.model, "method", None)
    own = method.table() if method is not None and hasattr(method, "table") else None
    if own is None or not hasattr(method, "load_table"):
        raise DataError(f"--init-from: starts prompt tuning's soft tokens; train with --method prompt-tuning ({what}).")
    if tuple(own.shape) != tuple(table.shape):
        raise shape_mismatch(what, tuple(table.shape), tuple(own.shape))
    method.load_table(table.to(own.dtype))
    task.model.clear_cache()
    return what


def transfer(task: Task, init_from: str | Path, source_task: str | None = None) -> tuple[Task, str]:
    """The task to train for ``--init-from PACK [--source-task ...]`` and what it starts from: the same task with
    its prompt set from the pack (``init_from_pack``), or with ``--source-task mixture`` an ATTEMPT mixture of the
    pack's source prompts around a new target prompt (``attempt.mixture_task``)."""
    if source_task == MIXTURE:
        return mixture_task(task, init_from)
    return task, init_from_pack(task, init_from, source_task)

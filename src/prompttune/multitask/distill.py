"""Teachers for a pack: the MPT paper's distillation (Wang et al. 2023, section 3.2), on the label read-out.

``train-multi --teacher NAME=ARTIFACT`` names a single-task prompt of task NAME (``prompttune train`` on that
task's rows; its labels must be the task's). Before the first step each teacher scores its task's training rows
once (no gradients: the teacher never changes), and the pack's loss adds, for every row of a task with a
teacher, ``weight * KL(teacher || pack)`` over the task's labels to the cross-entropy on its gold label. The
paper distils the teachers' output distributions and hidden states into the shared prompt and the task
factors; here only the output distribution over the label words (the read-out the pack is trained and used
with). Tasks without a teacher train on their gold labels alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core import artifact
from prompttune.core.backbone import Backbone
from prompttune.core.errors import DataError
from prompttune.multitask.specs import TaskData, parse_specs, task_index
from prompttune.prompt_task import PromptTask

MAX_WEIGHT = 100.0  # --distill-weight at most: beyond it the gold labels stop counting to many digits


def parse_teachers(items: Sequence[str] | None, names: list[str], weight: float) -> dict[str, Path]:
    """``NAME=ARTIFACT`` items: each NAME one of the pack's tasks (once), each ARTIFACT a single-task artifact
    (its manifest read and checked here, before any backbone loads)."""
    if not (isinstance(weight, int | float) and math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise DataError(f"--distill-weight {weight}: give a number above 0, at most {MAX_WEIGHT:g}.")
    out: dict[str, Path] = {}
    if not items:
        return out
    for name, path in parse_specs(list(items), "--teacher"):
        task_index(names, name, "the pack", "--teacher")
        manifest, _ = artifact.read(path)
        if not PromptTask.reads(manifest):
            kind = next((k for k in ("head", "generation", "pack", "mixture", "probe") if manifest.get(k)), "other")
            raise DataError(
                f"--teacher {name}={path}: a {kind} artifact; a teacher is a single-task prompt trained on task "
                f"{name}'s rows (`prompttune train FILE --method prompt-tuning`, label words)."
            )
        out[name] = path
    return out


def teacher_probs(backbone: Backbone, data: TaskData, labels: list[str], path: Path) -> tuple[Tensor, float]:
    """The teacher's label probabilities on the task's training rows, in the order of the pack task's ``labels``,
    and its accuracy on the task's validation rows."""
    from prompttune.task import load

    teacher = load(path, backbone)
    if sorted(teacher.labels) != sorted(labels):
        raise DataError(
            f"--teacher {data.name}={path}: its labels {sorted(teacher.labels)} are not task {data.name}'s "
            f"{sorted(labels)}; give a prompt trained on this task's rows."
        )
    preds = teacher.predict(data.train, calibrate=False)
    probs = torch.tensor([[p.scores[label] for label in labels] for p in preds], dtype=torch.float32)
    probs = probs / probs.sum(-1, keepdim=True)  # the read-out's softmax, summed in float32 again
    val = float(teacher.evaluate(data.val, calibrate=False)["accuracy"]) if len(data.val) else float("nan")
    return probs, val


def load_teachers(
    tasks: list[PromptTask], data: list[TaskData], paths: dict[str, Path], on_task: Callable[[str], None] | None = None
) -> tuple[dict[int, Tensor], dict[str, float]]:
    """Teacher probabilities by task index (in each pack task's label order), and each teacher's validation
    accuracy by task name."""
    probs, val = {}, {}
    for k, (task, d) in enumerate(zip(tasks, data, strict=True)):
        if d.name in paths:
            if on_task:
                on_task(d.name)
            probs[k], val[d.name] = teacher_probs(task.backbone, d, task.labels, paths[d.name])
    return probs, val


def distill_loss(scores: Tensor, teacher: Tensor) -> Tensor:
    """Summed over the rows: KL(teacher || softmax(scores)), the labels' distributions."""
    return F.kl_div(F.log_softmax(scores.float(), -1), teacher.to(scores.device), reduction="sum")


def teachers_digest(probs: dict[int, Tensor], weight: float) -> str:
    """What a resumed run must match: the weight and every teacher's probabilities."""
    if not probs:
        return ""
    h = hashlib.sha256(f"{weight!r}".encode())
    for k in sorted(probs):
        h.update(f"{k}:".encode() + probs[k].numpy().tobytes())
    return f"D={h.hexdigest()[:16]}:"

"""`train-multi` as a library verb: many tasks, one backbone, one pack (``spot`` or ``mpt``).

import prompttune.multitask as mt
pack, result, summary = mt.train_multi(["sst2=sst2.jsonl", "agnews=ag.jsonl"], "runs/pack", method="mpt")
pack.task("sst2").predict(["a gripping film"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prompttune.core import artifact, atomic
from prompttune.core.backbone import Backbone
from prompttune.distributed.context import init_from_env, main_writes
from prompttune.methods import METHODS
from prompttune.multitask.distill import load_teachers, parse_teachers, teachers_digest
from prompttune.multitask.mixture import MixtureObjective, check_batching, task_shares
from prompttune.multitask.pack import PackTask, save_pack
from prompttune.multitask.specs import (
    TaskData,
    check_form,
    load_tasks,
    parse_specs,
    task_templates,
    unused_field_warnings,
)
from prompttune.multitask.view import Stage, Strategy, accuracy, materialize, plain_table, use_view
from prompttune.prompt_task import PromptTask
from prompttune.train import Callback, TrainConfig, Trainer, TrainResult

MULTI_METHODS = ("mpt", "spot")


def checkpoint_dir_for(out_dir: Path) -> Path:
    """Where training writes its checkpoint: beside the pack, ``OUT.checkpoint`` (as ``train`` does)."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


def build_tasks(
    backbone: Backbone,
    data: list[TaskData],
    strategy: Strategy,
    num_virtual_tokens: int,
    init: str,
    seed: int,
    form: str = "auto",
) -> list[PromptTask]:
    """One PromptTask per task (its rows' built-in template, its labels), each reading the strategy's table."""
    tasks = []
    templates = task_templates(backbone, data, form, strategy.shares)
    for d in data:
        config = {"num_virtual_tokens": num_virtual_tokens, "init": init}
        task = PromptTask.for_data(backbone, d.train, "prompt-tuning", config, seed, templates[d.name])
        strategy.add(d.name, plain_table(task))
        use_view(task, task.model.method.slots, lambda name=d.name: strategy.table(name))
        tasks.append(task)
    return tasks


def params_summary(strategy: Strategy, names: list[str]) -> dict:
    """Trainable parameters: shared, each task's own, and per task as the MPT paper counts them (own + shared/K)."""
    own = {n: strategy.task_params(n) for n in names}
    shared = strategy.shared_params
    per_task = {n: own[n] + round(shared / len(names)) for n in names}
    return {
        "trainable_params_shared": shared,
        "trainable_params_task_specific": own,
        "trainable_params_per_task": per_task,
    }


def train_multi(
    task_specs: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    method: str = "mpt",
    limit_per_task: int | None = None,
    temperature: float = 2.0,
    batching: str = "mixed",
    num_virtual_tokens: int = 16,
    init: str = "labels",
    form: str = "auto",
    teachers: Sequence[str] = (),
    distill_weight: float = 1.0,
    config: TrainConfig | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    dtype: str | None = None,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    on_start: Callable[[dict], None] | None = None,
    on_teacher: Callable[[str], None] | None = None,
) -> tuple[PackTask | None, TrainResult, dict]:
    """Train one pack on several tasks (``NAME=FILE`` each) and save it: what `prompttune train-multi` does.

    ``teachers`` (``NAME=ARTIFACT`` each, distill.py): single-task prompts whose label probabilities on their
    task's training rows the pack also learns (``distill_weight`` x KL); ``on_teacher(name)`` is told before
    each teacher scores its rows.

    Every input error (names, files, rows, flags, the output path) is raised before the backbone loads.
    Returns (the saved pack loaded back, or None without ``out_dir``; the training result; the summary that
    `--json` prints).
    """
    config = (config or TrainConfig()).with_lr(METHODS["prompt-tuning"].default_lr)
    strategy = Strategy.get(method, kinds=MULTI_METHODS)
    specs = parse_specs(list(task_specs))
    task_shares([1] * len(specs), temperature)  # a bad --temperature: an error before anything loads
    check_form(form)
    check_batching(batching)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        artifact.check_output(out, overwrite or resume, "--out")
        atomic.check_output_dir(
            checkpoint_dir_for(out), "--out", lambda p: (p / "state.json").exists(), "training checkpoint", True
        )
    teacher_paths = parse_teachers(teachers, [name for name, _ in specs], distill_weight)
    data = load_tasks(specs, limit_per_task, config.seed)
    dist = init_from_env(device)  # under a launcher: join the run (each rank trains its part of every batch)
    if backbone is None:
        backbone = Backbone.load(model, dtype=dtype, device=device)
    tasks = build_tasks(backbone, data, strategy, num_virtual_tokens, init, config.seed, form)
    t0 = time.perf_counter()
    probs, teacher_val = load_teachers(tasks, data, teacher_paths, on_teacher)
    teacher_seconds = time.perf_counter() - t0
    stage = Stage(strategy, strategy.keys())
    objective = MixtureObjective(tasks, data, stage, temperature, config.seed, batching, probs, distill_weight)
    names = [d.name for d in data]
    counts = params_summary(strategy, names)
    warnings = unused_field_warnings(data)
    if on_start:
        tasks_info = {d.name: {"n_train": len(d.train), "n_val": len(d.val)} for d in data}
        on_start({"tasks": tasks_info, "warnings": warnings, **counts})
    batches = "" if batching == "mixed" else f"B={batching}:"  # checkpoints from before --batching still resume
    fingerprint = f"{method}:T={temperature}:{batches}{teachers_digest(probs, distill_weight)}" + "|".join(
        d.fingerprint for d in data
    )
    trainer = Trainer(objective, config, checkpoint_dir_for(out) if out else None, callbacks, fingerprint)
    result = trainer.fit(resume=resume)
    plain = {d.name: materialize(backbone, t, num_virtual_tokens, init) for d, t in zip(data, tasks, strict=True)}
    val_acc = {d.name: accuracy(plain[d.name], d.val) for d in data}
    task_info = {
        d.name: {
            "val_accuracy": val_acc[d.name],
            **({"teacher": str(teacher_paths[d.name])} if d.name in teacher_paths else {}),
            "data": {
                "train": d.train.source,
                "train_hash": d.train.fingerprint(),
                "n_train": len(d.train),
                "val": "seeded 10% of train",
                "val_hash": d.val.fingerprint(),
                "n_val": len(d.val),
            },
        }
        for d in data
    }
    pack_info = {
        "num_virtual_tokens": num_virtual_tokens,
        "init": init,
        "temperature": temperature,
        "batching": batching,
        **({"distill_weight": distill_weight} if teacher_paths else {}),
        **counts,
    }
    extra = {"metrics": result.metrics(), "training": config.to_dict()}
    pack = None

    def write() -> None:
        save_pack(out, backbone, method, plain, strategy.state(), pack_info, task_info, extra, overwrite or resume)

    main_writes(dist, write if out is not None else None)  # the others then read the pack rank 0 wrote
    if out is not None:
        pack = PackTask.from_artifact(out, *artifact.read(out), backbone)
    summary = {
        "pack": str(out) if out is not None else None,
        "method": method,
        "tasks": names,
        "val_accuracy": val_acc,
        "mean_val_accuracy": sum(val_acc.values()) / len(val_acc),
        **counts,
        "steps": result.steps,
        "best_step": result.best_step,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "stopped_by": result.stopped_by,
        **(
            {
                "teachers": {n: str(p) for n, p in teacher_paths.items()},
                "teacher_val_accuracy": teacher_val,
                "distill_weight": distill_weight,
                "teacher_seconds": round(teacher_seconds, 3),
            }
            if teacher_paths
            else {}
        ),
        "n_train": {d.name: len(d.train) for d in data},
        "n_val": {d.name: len(d.val) for d in data},
        "processes": dist.world if dist is not None else 1,
        "warnings": warnings,
    }
    return pack, result, summary

"""`prompttune train-multi | continual`: many tasks on one backbone (each command one library call)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, NprocOpt, Settings, emit_json, err, launched, out, warn

TaskOpt = Annotated[
    list[str],
    typer.Option(
        "--task",
        help="A task as NAME=FILE (labelled rows: text + label, or text_a + text_b + label, ...); repeatable, in "
        "order.",
    ),
]
LimitOpt = Annotated[int | None, typer.Option(help="Use only the first N rows of each task's file.")]
VirtualOpt = Annotated[int, typer.Option(help="Soft tokens at each template's [soft] slot.")]
InitOpt = Annotated[str, typer.Option(help="Soft-token init: labels, vocab, text, random.")]
FormOpt = Annotated[
    str,
    typer.Option(
        help="Built-in templates: early (soft tokens before the input), late (after it), or auto (as train picks: "
        "late for long rows; tasks sharing one prompt all take the early form when they differ)."
    ),
]
EpochsOpt = Annotated[int, typer.Option(help="Passes over the (sampled) rows of each run.")]
StepsOpt = Annotated[int | None, typer.Option(help="Stop each run after this many steps (overrides --epochs).")]
BatchOpt = Annotated[int, typer.Option(help="Rows per step.")]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate (default: prompt tuning's, 0.01).")]
EvalOpt = Annotated[int | None, typer.Option(help="Validate every K steps (default: 4 times an epoch).")]
PatienceOpt = Annotated[
    int, typer.Option(help="Stop after this many validations without improvement (a tie keeps the later state).")
]
EmaOpt = Annotated[float, typer.Option(help="Keep an exponential moving average of the prompt (0: off).")]
BudgetOpt = Annotated[float, typer.Option(help="Seconds of training per run at most (0: none).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the splits, init and batch order.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an earlier output at --out (never anything else).")]


def _config(epochs, max_steps, batch_size, lr, eval_every, patience, ema, time_budget, seed):
    from prompttune.train import TrainConfig

    return TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        eval_every=eval_every,
        patience=patience,
        ema=ema,
        seed=seed,
        time_budget_s=time_budget if time_budget > 0 else None,
    )


def train_multi(
    task: TaskOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="The pack (an artifact directory) to write.")],
    method: Annotated[
        str, typer.Option(help="mpt: shared prompt x per-task rank-one factors; spot: one shared prompt.")
    ] = "mpt",
    limit_per_task: LimitOpt = None,
    temperature: Annotated[
        float, typer.Option(help="Task sampling: shares proportional to rows^(1/T) (1: as the rows come).")
    ] = 2.0,
    batching: Annotated[
        str,
        typer.Option(
            help="mixed: a batch mixes tasks; task: each batch holds one task's rows (one prefix per step: "
            "faster, but each step pulls a shared prompt towards one task)."
        ),
    ] = "mixed",
    num_virtual_tokens: VirtualOpt = 16,
    init: InitOpt = "labels",
    form: FormOpt = "auto",
    teacher: Annotated[
        list[str] | None,
        typer.Option(
            help="A teacher as NAME=ARTIFACT: a single-task prompt of task NAME (prompttune train on its rows) "
            "whose label probabilities the pack also learns (MPT's distillation); repeatable."
        ),
    ] = None,
    distill_weight: Annotated[
        float, typer.Option(help="With --teacher: weight of KL(teacher || pack) beside the gold labels' loss.")
    ] = 1.0,
    epochs: EpochsOpt = 5,
    max_steps: StepsOpt = None,
    batch_size: BatchOpt = 16,
    lr: LrOpt = None,
    eval_every: EvalOpt = None,
    patience: PatienceOpt = 6,
    ema: EmaOpt = 0.9,
    time_budget: BudgetOpt = 1800.0,
    resume: Annotated[
        bool, typer.Option(help="Continue from the checkpoint beside --out (with any number of processes).")
    ] = False,
    nproc: NprocOpt = 1,
    overwrite: OverwriteOpt = False,
    seed: SeedOpt = 0,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train one prompt pack on several tasks (each with its own template and labels) and save it."""
    if launched(nproc, resumable=True):
        return
    from prompttune.cli.progress import TrainingProgress, progress_bar
    from prompttune.core.backbone import set_threads
    from prompttune.distributed.env import env_world, is_main_process
    from prompttune.multitask import train_multi as train_pack

    config = _config(epochs, max_steps, batch_size, lr, eval_every, patience, ema, time_budget, seed)
    set_threads()
    bar, progress = progress_bar(err), TrainingProgress(err, None)
    main, world = is_main_process(), env_world()  # under a launcher, rank 0 alone reports

    def started(info: dict) -> None:
        if not main:
            return
        rows = ", ".join(f"{n} {t['n_train']}+{t['n_val']}" for n, t in info["tasks"].items())
        parallel = f"; data-parallel over {world} processes" if world > 1 else ""
        err.print(f"{method} pack, rows (train+validation): {rows}{parallel}", highlight=False)
        for warning in info.get("warnings", ()):
            warn(warning)
        bar.start()
        progress.attach(bar)

    def teacher_note(name: str) -> None:
        if main:
            err.print(f"teacher of {name}: scoring its training rows", highlight=False)

    try:
        _, _, summary = train_pack(
            task,
            out_dir,
            method=method,
            limit_per_task=limit_per_task,
            temperature=temperature,
            batching=batching,
            num_virtual_tokens=num_virtual_tokens,
            init=init,
            form=form,
            teachers=teacher or (),
            distill_weight=distill_weight,
            config=config,
            model=model,
            resume=resume,
            overwrite=overwrite,
            callbacks=[progress],
            on_start=started,
            on_teacher=teacher_note,
            **Settings.backbone_args(),
        )
    finally:
        if progress.bar is not None:
            bar.stop()
    if not main:
        return
    if as_json:
        emit_json(summary)
        return
    teachers = summary.get("teacher_val_accuracy", {})
    for name, acc in summary["val_accuracy"].items():
        teacher = f" (its teacher {teachers[name]:.4f})" if name in teachers else ""
        params = summary["trainable_params_per_task"][name]
        out.print(f"{name}: validation accuracy {acc:.4f}{teacher}, {params:,} params/task")
    out.print(f"saved {summary['pack']}: mean validation accuracy {summary['mean_val_accuracy']:.4f}")


def continual(
    task: TaskOpt,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the pack (DIR/pack) and DIR/report.{md,json,png}.")
    ],
    method: Annotated[
        str,
        typer.Option(help="progressive: a prompt per task, earlier ones frozen before it; sequential: one prompt."),
    ] = "progressive",
    limit_per_task: LimitOpt = None,
    num_virtual_tokens: VirtualOpt = 16,
    init: InitOpt = "labels",
    form: FormOpt = "auto",
    epochs: EpochsOpt = 5,
    max_steps: StepsOpt = None,
    batch_size: BatchOpt = 16,
    lr: LrOpt = None,
    eval_every: EvalOpt = None,
    patience: PatienceOpt = 6,
    ema: EmaOpt = 0.9,
    time_budget: BudgetOpt = 600.0,
    nproc: NprocOpt = 1,
    overwrite: OverwriteOpt = False,
    seed: SeedOpt = 0,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn tasks one after another; report the accuracy matrix, average accuracy, BWT and FWT."""
    if launched(nproc, resumable=False):
        return
    from prompttune.cli.progress import TrainingProgress, progress_bar
    from prompttune.core.backbone import set_threads
    from prompttune.distributed.env import env_world, is_main_process
    from prompttune.multitask import learn_continual

    config = _config(epochs, max_steps, batch_size, lr, eval_every, patience, ema, time_budget, seed)
    set_threads()
    bar, progress = progress_bar(err), TrainingProgress(err, None)
    main, world = is_main_process(), env_world()  # under a launcher, rank 0 alone reports

    def next_task(name: str, j: int, total: int) -> None:
        if not main:
            return
        parallel = f" (data-parallel over {world} processes)" if world > 1 and j == 0 else ""
        err.print(f"task {j + 1}/{total}: {name}{parallel}", highlight=False)
        if progress.bar is None:
            bar.start()
        progress.attach(bar)  # a bar per task

    try:
        _, report = learn_continual(
            task,
            out_dir,
            method=method,
            limit_per_task=limit_per_task,
            num_virtual_tokens=num_virtual_tokens,
            init=init,
            form=form,
            config=config,
            model=model,
            overwrite=overwrite,
            callbacks=[progress],
            on_task=next_task,
            on_warning=warn if main else None,
            **Settings.backbone_args(),
        )
    finally:
        if progress.bar is not None:
            bar.stop()
    if not main:
        return
    if as_json:
        emit_json({k: v for k, v in report.items() if k not in ("training", "runs")})
        return
    bwt = "n/a" if report["bwt"] is None else f"{report['bwt']:+.4f}"
    fwt = "n/a" if report["fwt"] is None else f"{report['fwt']:+.4f}"
    out.print(f"average accuracy {report['average_accuracy']:.4f}, BWT {bwt}, FWT {fwt}")
    out.print(f"saved {report['pack']} and {out_dir}/report.md, report.json, report.png")

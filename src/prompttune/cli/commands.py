"""What the CLI commands do, kept apart from flag parsing so tests and the demo call them directly."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from prompttune.api import PromptTask, load, prepare_data
from prompttune.core.backbone import Backbone, set_threads
from prompttune.core.data import from_records, load_rows
from prompttune.core.errors import PromptTuneError
from prompttune.methods.options import config_fields, method_class, parse_method_options
from prompttune.train import TrainConfig, Trainer


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def load_backbone(model: str | None, console: Console) -> Backbone:
    with console.status(f"loading backbone {model or 'smollm2-135m-instruct (default)'}"):
        return Backbone.load(model)


def run_train(
    data: Path,
    out_dir: Path,
    val: Path | None,
    limit: int | None,
    method: str,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    lr: float,
    num_virtual_tokens: int,
    init: str,
    init_text: str | None,
    template: str | None,
    verbalizer: str | None,
    calibrate: bool,
    eval_every: int | None,
    patience: int,
    resume: bool,
    model: str | None,
    seed: int,
    as_json: bool = False,
    console: Console | None = None,
    backbone: Backbone | None = None,
    reparam_hidden: int = 0,
    ema: float = 0.9,
    demos: int = 0,
    method_option: list[str] | None = None,
    head: str | None = None,
    head_lr: float | None = None,
    max_length: int | None = None,
    backbone_dropout: bool = False,
) -> dict:
    console = console or Console(stderr=True)
    params = dict(locals())
    from prompttune.cli.head_commands import head_kind_for, run_head_train

    kind = head_kind_for(data, head)
    if kind:  # a read-out head instead of a verbalizer (head_commands.py)
        return run_head_train(kind, **params)
    method = method or "prompt-tuning"
    if backbone_dropout:
        raise PromptTuneError(
            "--backbone-dropout: applies to head tasks (--head); verbalizer training has no such step."
        )
    set_threads()
    for flag, value in (
        ("--epochs", epochs),
        ("--batch-size", batch_size),
        ("--num-virtual-tokens", num_virtual_tokens),
    ):
        if value < 1:
            raise PromptTuneError(f"{flag} {value}: must be at least 1.")
    options = parse_method_options(method, method_option)  # unknown method or option: an error before loading
    lr = lr if lr is not None else getattr(method_class(method), "default_lr", 0.01)
    if lr <= 0:
        raise PromptTuneError(f"--lr {lr}: must be positive.")
    train_ds, val_ds, tmpl = prepare_data(data, val, limit, seed=seed, template=template)
    backbone = backbone or load_backbone(model, console)
    labels = sorted(train_ds.labels())
    if demos:
        tmpl = tmpl.with_demos(pick_demos(train_ds, sorted(tmpl.variables), labels, demos, seed))
    flags = {
        "num_virtual_tokens": num_virtual_tokens,
        "init": init,
        "init_text": init_text,
        "reparam_hidden": reparam_hidden,
    }
    method_config = {k: v for k, v in flags.items() if k in config_fields(method)} | options
    task = PromptTask.create(backbone, labels, method, method_config, tmpl, verbalizer=verbalizer, seed=seed)
    pm = task.model
    y_val = pm.label_indices(val_ds)  # a validation label the verbalizer does not know is an error here
    y_train = pm.label_indices(train_ds)
    enc_train, enc_val = pm.encode(train_ds), pm.encode(val_ds)
    trainable = sum(p.numel() for p in pm.method.parameters() if p.requires_grad)
    config = TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        eval_every=eval_every,
        patience=patience,
        seed=seed,
        ema=ema,
    )
    trainer = Trainer(pm, config, checkpoint_dir=out_dir.with_name(out_dir.name + ".checkpoint"))
    console.print(
        f"train {len(train_ds)} rows, validation {len(val_ds)} rows, labels {labels}, "
        f"method {method}, {trainable:,} trainable parameters",
        highlight=False,
    )
    if trainable:
        with progress_bar(console) as bar:
            bar_task = bar.add_task("training", total=None, info="")
            state = {"best": None}

            def on_progress(ev: dict) -> None:
                if "best_val_accuracy" in ev:
                    state["best"] = ev["best_val_accuracy"]
                    if not console.is_terminal:  # logs and CI: one line per validation instead of a bar
                        console.print(
                            f"step {ev['step']}/{ev['total']} val accuracy {ev['val_accuracy']:.4f} "
                            f"(best {ev['best_val_accuracy']:.4f}) {state.get('speed', '')}"
                        )
                    return
                state["speed"] = f"{ev['examples_per_s']:.1f} ex/s, loss {ev['loss']:.3f}"
                best = f" best val {state['best']:.3f}" if state["best"] is not None else ""
                bar.update(
                    bar_task,
                    completed=ev["step"],
                    total=ev["total"],
                    info=f"loss {ev['loss']:.3f} {ev['examples_per_s']:.1f} ex/s{best}",
                )

            trainer.on_progress = on_progress
            result = trainer.fit(enc_train, y_train, enc_val, y_val, resume=resume)
        zero_shot = result.history[0]["val_accuracy"] if result.history else None
    else:
        acc = trainer.evaluate(enc_val, y_val)
        from prompttune.train import TrainResult

        result, zero_shot = TrainResult(best_val_accuracy=acc), acc
    if calibrate:
        task.calibrate()
    metrics = {
        "best_val_accuracy": result.best_val_accuracy,
        "initial_val_accuracy": zero_shot,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    task.save(
        out_dir,
        {
            "metrics": metrics,
            "training": config.to_dict(),
            "data": {
                "train": str(data),
                "train_hash": train_ds.fingerprint(),
                "n_train": len(train_ds),
                "val": str(val) if val else "seeded 10% of train",
                "val_hash": val_ds.fingerprint(),
                "n_val": len(val_ds),
            },
        },
    )
    return {
        "artifact": str(out_dir),
        "method": method,
        "trainable_params": trainable,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "best_val_accuracy": result.best_val_accuracy,
        "initial_val_accuracy": zero_shot,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
    }


def pick_demos(ds, fields: list[str], labels: list[str], k: int, seed: int) -> list[dict]:
    """k training rows as few-shot demos: seeded, taking the labels in turn so each is shown."""
    import random

    rng = random.Random(seed)
    by_label = {lab: [r for r in ds.rows if r.label == lab] for lab in labels}
    for rows in by_label.values():
        rng.shuffle(rows)
    picked = []
    while len(picked) < k and any(by_label.values()):
        for lab in labels:
            if by_label[lab] and len(picked) < k:
                row = by_label[lab].pop()
                picked.append({**{f: row.fields[f] for f in fields}, "label": row.label})
    rng.shuffle(picked)
    return picked


def run_eval(
    artifact_dir: Path, data: Path, batch_size: int, calibrate: bool, model: str | None, console: Console
) -> dict:
    rows = load_rows(data)
    with console.status(f"loading {artifact_dir}"):
        task = load(artifact_dir, model)
    with progress_bar(console) as bar:
        t = bar.add_task("evaluating", total=len(rows), info="")
        report = task.evaluate(rows, batch_size=batch_size, calibrate=calibrate, progress=lambda n: bar.advance(t, n))
    report["artifact"] = str(artifact_dir)
    report["data"] = str(data)
    return report


def show_report(console: Console, report: dict) -> None:
    if "accuracy" not in report:
        from prompttune.cli.head_commands import show_head_report

        return show_head_report(console, report)
    console.print(
        f"accuracy {report['accuracy']:.4f} on {report['n']} rows "
        f"(macro F1 {report['macro_f1']:.4f}, {report['examples_per_s']:.1f} examples/s)"
    )
    table = Table("label", "precision", "recall", "f1", "support")
    for label, m in report["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)


def run_predict(artifact_dir: Path, texts: list[str] | None, file: Path | None, model: str | None) -> list[dict]:
    if not texts and not file:
        raise PromptTuneError("predict: give texts as arguments or --file rows.jsonl.")
    ds = load_rows(file) if file else from_records(texts or [], "arguments")
    task = load(artifact_dir, model)
    if not isinstance(task, PromptTask):
        from prompttune.cli.head_commands import head_predictions

        return head_predictions(task, ds)
    preds = task.predict(ds)
    shown = [
        r.fields.get("text") or " | ".join(str(r.fields[v]) for v in sorted(task.model.template.variables))
        for r in ds.rows
    ]
    return [{"input": s, "label": p.label, "scores": p.scores} for s, p in zip(shown, preds, strict=True)]


def run_generate(
    text: str,
    artifact_dir: Path | None,
    system: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    model: str | None,
) -> str:
    set_threads()
    if artifact_dir:
        task = load(artifact_dir, model)
    else:
        backbone = Backbone.load(model)
        tmpl = {"system": system, "user": "{{ text }}"}
        task = PromptTask.create(backbone, ["text"], "zero-shot", {"num_virtual_tokens": 1}, tmpl)
    return task.generate(text, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def run_models(console: Console) -> None:
    from prompttune.core import defaults

    table = Table("alias", "model", "where")
    for name in (defaults.DEFAULT_DECODER, defaults.DEFAULT_ENCODER):
        try:
            _, where = defaults.resolve(name)
        except PromptTuneError as e:
            where = f"[red]{e}[/]"
        table.add_row(", ".join(a for a, n in defaults.ALIASES.items() if n == name), name, str(where))
    console.print(table)
    console.print(f"cache: {defaults.cache_dir()}  (set PROMPTTUNE_CACHE to move it)")

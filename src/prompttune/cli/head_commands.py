"""CLI bodies for head tasks: `train --head`, and eval/predict of artifacts with a head."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from prompttune.core.backbone import set_threads
from prompttune.core.data import Dataset, load_rows
from prompttune.core.errors import DataError, PromptTuneError
from prompttune.heads.base import HEAD_TASKS, detect_kind
from prompttune.heads.task import HeadTaskModel
from prompttune.methods.options import config_fields, method_class, parse_method_options
from prompttune.train import TrainConfig

DEFAULT_METHOD = "p-tuning-v2"
DEFAULT_MODEL = "minilm"  # the P-tuning v2 setting: an encoder with a head


def head_kind_for(data: Path, head: str | None) -> str | None:
    """The head kind to train: --head, else what the data's fields call for; None: a verbalizer task."""
    if head is not None:
        if head not in HEAD_TASKS:
            raise PromptTuneError(f"--head {head}: unknown; choose one of {', '.join(sorted(HEAD_TASKS))}.")
        return head
    return detect_kind(load_rows(data))


def _split(data: Path, val: Path | None, limit: int | None, seed: int) -> tuple[Dataset, Dataset]:
    train = load_rows(data).limit(limit)
    if val:
        return train, load_rows(val)
    if len(train) < 4:
        raise DataError(f"{data}: {len(train)} rows is too few to carve a validation split; pass --val.")
    return train.split(0.1, seed)


def run_head_train(
    kind: str,
    data: Path,
    out_dir: Path,
    val: Path | None,
    limit: int | None,
    method: str | None,
    method_option: list[str] | None,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    lr: float | None,
    head_lr: float | None,
    num_virtual_tokens: int,
    init: str,
    eval_every: int | None,
    patience: int,
    ema: float,
    resume: bool,
    model: str | None,
    seed: int,
    max_length: int | None,
    console: Console,
    backbone_dropout: bool = False,
    backbone=None,
    **_verbalizer_only,  # train's template/verbalizer/demos/calibrate flags do not apply to a head
) -> dict:
    set_threads()
    method = method or DEFAULT_METHOD
    options = parse_method_options(method, method_option)
    lr = lr if lr is not None else getattr(method_class(method), "default_lr", 0.01)
    if lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise PromptTuneError("--lr / --head-lr: must be positive.")
    train_ds, val_ds = _split(data, val, limit, seed)
    cls = HEAD_TASKS[kind]
    labels = cls.labels_from(train_ds)
    settings = {"max_length": max_length} if max_length else {}
    from prompttune.cli.commands import load_backbone

    backbone = backbone or load_backbone(model or DEFAULT_MODEL, console)
    flags = {"num_virtual_tokens": num_virtual_tokens, "init": init}
    method_config = {k: v for k, v in flags.items() if k in config_fields(method)} | options
    task = HeadTaskModel.create(backbone, kind, labels, method, method_config, settings, seed=seed)
    trainable = sum(p.numel() for p in task.model.trainable.parameters() if p.requires_grad)
    config = TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        backbone_dropout=backbone_dropout,
        eval_every=eval_every,
        patience=patience,
        seed=seed,
        ema=ema,
    )
    console.print(
        f"{kind} head: train {len(train_ds)} rows, validation {len(val_ds)} rows, "
        f"{f'{len(labels)} labels, ' if labels else ''}method {method} on {backbone.model_id}, "
        f"{trainable:,} trainable parameters",
        highlight=False,
    )

    def on_progress(ev: dict) -> None:
        if "best_val_accuracy" in ev:
            console.print(
                f"step {ev['step']}/{ev['total']} val {task.task.metric} {ev['val_accuracy']:.4f} "
                f"(best {ev['best_val_accuracy']:.4f})",
                highlight=False,
            )

    ckpt = out_dir.with_name(out_dir.name + ".checkpoint")
    result = task.train(train_ds, val_ds, config, checkpoint_dir=ckpt, resume=resume, on_progress=on_progress)
    metrics = {
        "metric": task.task.metric,
        "best_val": result.best_val_accuracy,
        "initial_val": result.history[0]["val_accuracy"] if result.history else None,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    data_info = {"train": str(data), "train_hash": train_ds.fingerprint(), "n_train": len(train_ds)}
    data_info |= {"val": str(val) if val else "seeded 10% of train", "n_val": len(val_ds)}
    task.save(out_dir, {"metrics": metrics, "training": config.to_dict(), "data": data_info})
    return {
        "artifact": str(out_dir),
        "head": kind,
        "method": method,
        "metric": task.task.metric,
        "trainable_params": trainable,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_s": result.train_examples_per_s,
        "best_val_accuracy": result.best_val_accuracy,  # the head's validation metric (see "metric")
        "initial_val_accuracy": metrics["initial_val"],
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
    }


def show_head_report(console: Console, report: dict) -> None:
    """Entity P/R/F1 (per type too) for tagging, EM/F1 for QA."""
    if "exact_match" in report:
        console.print(
            f"exact match {report['exact_match']:.2f}  F1 {report['f1']:.2f} on {report['n']} questions "
            f"({report['examples_per_s']:.1f} questions/s)"
        )
        return
    console.print(
        f"entity F1 {report['f1']:.4f} (precision {report['precision']:.4f}, recall {report['recall']:.4f}) "
        f"on {report['n']} rows ({report['examples_per_s']:.1f} rows/s)"
    )
    table = Table("type", "precision", "recall", "f1", "support")
    for name, m in report["per_type"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)


def head_predictions(task: HeadTaskModel, ds: Dataset) -> list[dict]:
    """One JSON-able record per row: the row's input and the task's prediction."""
    preds = task.predict(ds)
    out = []
    for row, p in zip(ds.rows, preds, strict=True):
        shown = row.fields.get("question") or row.fields.get("text") or " ".join(row.fields.get("tokens") or [])
        out.append({"input": str(shown), **p})
    return out


def format_head_prediction(record: dict) -> str:
    if "entities" in record:
        ents = ", ".join(f"{e['text']} ({e['type']})" for e in record["entities"]) or "no entities"
        return f"{ents}  | {record['input'][:70]}"
    if "answer" in record:
        return f"{record['answer']!r}  | {record['input'][:70]}"
    scores = "  ".join(f"{k}={v:.3f}" for k, v in record["scores"].items())
    return f"{record['label']:<12} {scores}  | {record['input'][:70]}"

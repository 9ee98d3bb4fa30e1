"""`prompttune demo`: the main job on a fresh machine, on a small sentiment task the project ships.

Splits the shipped rows (seeded) into train and held-out test, scores the hard prompt alone
(zero-shot), trains a soft prompt with the default recipe, scores it on the same held-out rows,
saves the artifact, loads it back and labels a few new sentences.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prompttune.cli.options import ModelOpt, err, load_backbone, out

SENTENCES = [
    "The battery died after two hours and support never answered my emails.",
    "An absolute delight from the first page to the last.",
    "Honestly not bad at all; I would happily stay there again.",
    "The soup was cold and the waiter rolled his eyes at us.",
]


def run_demo(out_dir: Path, max_steps: int | None, model: str | None, out: Console, err: Console) -> dict:
    from prompttune.api import PromptTask, load, train_from_file
    from prompttune.cli.progress import TrainingProgress, progress_bar
    from prompttune.core.backbone import set_threads
    from prompttune.core.data import load_rows, shipped_data
    from prompttune.train import TrainConfig

    set_threads()
    t_start = time.perf_counter()
    data_dir = out_dir.with_name(out_dir.name + "-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = load_rows(shipped_data())
    rest, test = rows.split(0.25, seed=0)
    for name, ds in (("train", rest), ("test", test)):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r.fields) + "\n" for r in ds.rows))
    out.print(
        f"[bold]prompttune demo[/]: sentiment, {len(rest)} training rows, {len(test)} held-out rows "
        f"(shipped with the package; copies in {data_dir})"
    )
    backbone = load_backbone(model, err)  # --dtype / --device from Settings
    labels = sorted(rest.labels())

    zero = PromptTask.create(backbone, labels, "zero-shot", {})
    zero_report = zero.evaluate(test)
    out.print(f"zero-shot (hard prompt only) accuracy on held-out rows: {zero_report['accuracy']:.3f}")

    t0 = time.perf_counter()
    config = TrainConfig(epochs=4, max_steps=max_steps, batch_size=16, lr=0.01, patience=4, seed=0)
    with progress_bar(err) as bar:
        _, _, result = train_from_file(
            data_dir / "train.jsonl",
            out_dir,
            method="prompt-tuning",
            method_config={"num_virtual_tokens": 16, "init": "labels"},
            config=config,
            backbone=backbone,
            overwrite=True,  # the demo's own artifact: rerunning the demo replaces it
            callbacks=[TrainingProgress(err, bar)],
        )
    train_wall = time.perf_counter() - t0
    tuned = load(out_dir, backbone)
    tuned_report = tuned.evaluate(test)

    table = Table("prompt", "held-out accuracy", "trainable params", "examples/s (eval)")
    table.add_row(
        "zero-shot (hard prompt)", f"{zero_report['accuracy']:.3f}", "0", f"{zero_report['examples_per_s']:.1f}"
    )
    table.add_row(
        "prompt tuning (16 + 4 soft tokens)",
        f"{tuned_report['accuracy']:.3f}",
        f"{result['trainable_params']:,}",
        f"{tuned_report['examples_per_s']:.1f}",
    )
    out.print(table)
    out.print(
        f"trained {result['steps']} steps in {train_wall:.0f} s ({result['train_examples_per_s']:.1f} "
        f"training examples/s); artifact saved in {out_dir}"
    )
    out.print("predictions from the saved artifact:")
    for sentence, p in zip(SENTENCES, tuned.predict(SENTENCES), strict=True):
        out.print(f"  {p.label:<9} ({p.scores[p.label]:.2f})  {sentence}")
    out.print(
        f'try:  prompttune predict {out_dir} "your sentence"   |   prompttune eval {out_dir} {data_dir / "test.jsonl"}'
    )
    out.print(f"total {time.perf_counter() - t_start:.0f} s")
    return {"zero_shot_accuracy": zero_report["accuracy"], "tuned_accuracy": tuned_report["accuracy"], "train": result}


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to save the demo artifact.")] = Path("runs/demo"),
    max_steps: Annotated[int | None, typer.Option(help="Cap the training steps (default: the recipe's).")] = None,
    model: ModelOpt = None,
) -> None:
    """Train a soft prompt on a small shipped sentiment task; show zero-shot vs tuned accuracy."""
    run_demo(out_dir, max_steps, model, out, err)

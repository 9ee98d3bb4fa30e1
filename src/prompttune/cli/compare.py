"""`prompttune compare`: flags in, the harness (``prompttune.compare.run_compare``) runs, the report out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, Settings, emit_json, err, out


def compare(
    data: Annotated[Path, typer.Argument(help="Labelled rows (.jsonl or .csv) to train, validate and test on.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for results and reports (rerun to resume).")] = Path(
        "runs/compare"
    ),
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: zero-shot, few-shot, calibrated, any soft-prompt method, lora, full-ft; or all."
        ),
    ] = "zero-shot,few-shot,calibrated,prompt-tuning,lora",
    method_option: Annotated[
        list[str] | None,
        typer.Option(
            "--method-option",
            "-o",
            help="METHOD.KEY=VALUE, repeatable: lr, max_steps, batch_size, demos, calibrate, ema, or a setting of "
            "the method (e.g. lora.r=16, few-shot.demos=8, prompt-tuning.num_virtual_tokens=20).",
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (init, batch order, training subset).")] = "0",
    train_sizes: Annotated[
        str | None, typer.Option(help="Comma-separated training-set sizes for accuracy-vs-rows curves.")
    ] = None,
    test: Annotated[Path | None, typer.Option(help="Test rows; default: a seeded 20% of DATA.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation rows; default: a seeded 10% of the rest.")] = None,
    val_rows: Annotated[
        int | None, typer.Option(help="Validation rows to set apart from DATA (without --val).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows of DATA.")] = None,
    max_steps: Annotated[int, typer.Option(help="Training steps per run (early stopping may end sooner).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Rows per training step.")] = 16,
    template: Annotated[str | None, typer.Option(help="Template for every method (default: built-in).")] = None,
    verbalizer: Annotated[str | None, typer.Option(help="Label words, as for train.")] = None,
    reference: Annotated[
        str | None, typer.Option(help="Method to measure data advantage against (default: full-ft, else lora).")
    ] = None,
    isolate: Annotated[bool, typer.Option(help="Run each cell in its own process (own peak memory).")] = True,
    executor: Annotated[
        str,
        typer.Option(
            help="Where cells run: local (here, one process per cell) or ray (each cell a Ray task; "
            "pip install 'prompttune[ray]'). Results land in the same --out either way (resume works across both)."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --executor ray: the cluster to join (auto, or HOST:PORT); default: one started here."),
    ] = None,
    cell_cpus: Annotated[float, typer.Option(help="With --executor ray: CPUs each cell asks for.")] = 1.0,
    cell_gpus: Annotated[float, typer.Option(help="With --executor ray: GPUs each cell asks for.")] = 0.0,
    lr_grid: Annotated[
        str | None,
        typer.Option(
            help="Train each trainable arm at several learning rates, each with its own early stopping in the same "
            "steps, and keep the best on validation: a count (3: the default x0.32, x1, x3.2) or rates "
            "(0.003,0.01,0.03). The report shows the rate chosen per arm."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Generation data (rows with a 'target'): rank by bleu, rougeL or em (default bleu); default "
            "methods then zero-shot,few-shot,prompt-tuning,prefix-tuning,lora."
        ),
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank hard prompts, soft prompts, LoRA and full fine-tuning on the same data, with cost."""
    from prompttune.compare import run_compare

    try:
        result = run_compare(
            data, out_dir, methods, method_option, seeds, train_sizes, test, val, limit, val_rows, max_steps,
            batch_size, template=template, verbalizer=verbalizer, reference=reference, model=model,
            executor=executor, ray_address=ray_address, cell_cpus=cell_cpus, cell_gpus=cell_gpus, lr_grid=lr_grid,
            dtype=Settings.dtype, isolate=isolate, console=err, metric=metric,
        )  # fmt: skip
    except KeyboardInterrupt:
        err.print(f"interrupted; finished runs are kept in {out_dir}: rerun the same command to resume.")
        raise SystemExit(130) from None
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "summary"} | {"methods": result["summary"]["methods"]})
    else:
        out.print((Path(result["reports"]["md"])).read_text(), markup=False, highlight=False)
        out.print(f"reports: {', '.join(result['reports'].values())}", highlight=False)

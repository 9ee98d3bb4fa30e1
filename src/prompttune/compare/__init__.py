"""`prompttune compare`: hard prompts, every soft-prompt method, LoRA and full fine-tuning on the same
split and seeds, with accuracy, cost and data efficiency, in one report.

- ``arms``: what can be compared (hard prompts, the method registry, the baselines) and its settings;
- ``split``: the one train / validation / test split and its seeded training subsets;
- ``baselines``: LoRA (PEFT) and full fine-tuning behind the same template + verbalizer read-out;
- ``cell``: one (arm, seed, size) run, in its own process;
- ``runner``: plans cells, skips finished ones, stores each result atomically;
- ``worth``: Le Scao & Rush's data advantage; ``report``: JSON, Markdown, HTML;
- ``generation``: the same for rows with a ``target`` (text to write), ranked by BLEU, ROUGE-L or exact match.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from prompttune.compare import arms as arms_mod
from prompttune.compare import executors as cell_executors
from prompttune.compare import generation
from prompttune.compare import lr_grid as grids
from prompttune.compare.report import summarize, write_reports
from prompttune.compare.runner import plan
from prompttune.compare.split import make_split
from prompttune.core import atomic
from prompttune.core.errors import PromptTuneError


def parse_ints(flag: str, spec: str | None) -> list[int]:
    if not spec:
        return []
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise PromptTuneError(f"{flag} {spec}: give whole numbers separated by commas, e.g. 0,1,2.") from None
    if len(set(values)) != len(values):
        raise PromptTuneError(f"{flag} {spec}: a value is listed twice.")
    return values


DEFAULT_METHODS = "zero-shot,few-shot,calibrated,prompt-tuning,lora"


def run_compare(
    data: Path,
    out: Path,
    methods: str = DEFAULT_METHODS,
    method_options: list[str] | None = None,
    seeds: str = "0",
    train_sizes: str | None = None,
    test: Path | None = None,
    val: Path | None = None,
    limit: int | None = None,
    val_rows: int | None = None,
    max_steps: int = 100,
    batch_size: int = 16,
    eval_batch_size: int = 32,
    template: str | None = None,
    verbalizer: str | None = None,
    reference: str | None = None,
    model: str | None = None,
    dtype: str | None = None,
    isolate: bool = True,
    console: Console | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    cell_cpus: float = 1,
    cell_gpus: float = 0,
    lr_grid: str | None = None,
    metric: str | None = None,
) -> dict:
    """Run (or resume) a comparison in ``out`` and write report.{json,md,html} there; returns the summary.

    Rows with a ``target`` are generation data (``compare.generation``): ranked by ``metric`` (bleu, rougeL, em).
    """
    console = console or Console(stderr=True)
    gen = generation.for_data(data, metric)
    if gen and methods == DEFAULT_METHODS:
        methods = generation.DEFAULT_METHODS
    names = arms_mod.parse_methods(methods)
    if gen:
        gen.check_arms(names)
    arm_list = arms_mod.resolve(names, arms_mod.parse_options(method_options or []), model)
    grid = grids.parse(lr_grid)  # compare/lr_grid.py: each trainable arm's rate chosen on validation
    cell_executors.check(executor, ray_address, cell_cpus, cell_gpus)
    seed_list = parse_ints("--seeds", seeds) or [0]
    sizes = parse_ints("--train-sizes", train_sizes)
    if any(n < 1 for n in sizes) or max_steps < 1 or batch_size < 1:
        raise PromptTuneError("--train-sizes, --max-steps and --batch-size must be at least 1.")
    split = (gen.split if gen else make_split)(data, val, test, limit, val_rows)
    for n in sizes:
        split.train(n, 0)  # a size larger than the pool is an error now, not after hours
    if reference is None:
        reference = next((b for b in ("full-ft", "lora") if b in names), None)
    elif reference not in names:
        raise PromptTuneError(f"--reference {reference}: not one of --methods ({', '.join(names)}).")
    settings = {
        "data": str(Path(data).resolve()),
        "test": str(Path(test).resolve()) if test else None,
        "val": str(Path(val).resolve()) if val else None,
        "limit": limit,
        "val_rows": val_rows,
        "model": model,
        "dtype": dtype,
        "template": template,
        "verbalizer": verbalizer,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        **(gen.settings if gen else {}),  # only for generation data: labelled rows' cells keep their keys
    }
    cells = plan(grids.expand(arm_list, grid, max_steps), seed_list, sizes or [None])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"compare: {len(arm_list)} methods, {len(cells)} runs; train pool {len(split.pool)} rows, validation "
        f"{len(split.val)}, test {len(split.test)}; results in {out}",
        highlight=False,
    )
    from prompttune.compare.progress import CellProgress

    with CellProgress(console, cells) as progress:
        records, ran = cell_executors.run(
            executor, cells, settings, split.fingerprint, out, isolate, progress.on_event, ray_address, cell_cpus,
            cell_gpus,
        )  # fmt: skip
    header = (
        f"data {data} (fingerprint {split.fingerprint}): train pool {len(split.pool)}, validation {len(split.val)}, "
        f"test {len(split.test)} rows; seeds {','.join(map(str, seed_list))}; training rows "
        f"{','.join(map(str, sizes)) or len(split.pool)}; at most {max_steps} steps of {batch_size} rows; "
        f"model {model or 'smollm2 (default)'}" + (f"; ranked by {gen.label} on the test inputs" if gen else "")
    )
    chosen, lr_table = grids.choose(records)  # one run per arm, seed and size (the grid's best on validation)
    summary = summarize(chosen, names, reference)
    if gen:
        summary["metric_label"] = gen.label  # the report's score column
    payload = {"settings": settings, "seeds": seed_list, "data_fingerprint": split.fingerprint, "cells": records}
    if lr_table:
        header += grids.describe(lr_table)
        payload["lr_grid"] = lr_table
    paths = write_reports(out, summary, header, payload)
    atomic.write_json(out / "last_run.json", {"cells": len(cells), "ran": ran, "reused": len(cells) - ran})
    return {
        "summary": summary,
        "ran": ran,
        "reused": len(cells) - ran,
        "reports": {k: str(v) for k, v in paths.items()},
    }

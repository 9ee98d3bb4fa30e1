"""`prompttune train`: flags in, one library call (``prompttune.api.train``), the result out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, NprocOpt, Settings, emit_json, err, launched, out, warn
from prompttune.core.errors import PromptTuneError


def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Training rows (.jsonl or .csv): text + label, or text_a + text_b + label; "
            "tokens + tags (tagging) or context + question + answers (QA) train a head."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")] = Path("runs/prompt"),
    val: Annotated[Path | None, typer.Option(help="Validation rows; default: a seeded 10% of DATA.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows of DATA.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Method: prompt-tuning, p-tuning, prefix-tuning, p-tuning-v2, or zero-shot (hard prompt only; "
            "with a head: a linear probe). Default: prompt-tuning; p-tuning-v2 with a head."
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="Read out with a trained head instead of a verbalizer: classification, tokens (tagging, IOB2), "
            "span (extractive QA), or probe (a logistic regression on a decoder layer's features of the rendered "
            "rows; no prompt trains). Default: tokens / span when the data has their fields. Default model: minilm "
            "(probe: the default decoder)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="generate: train a prompt that writes each row's 'target' text (LM loss on the target, validated "
            "by ROUGE-L; default method prefix-tuning). Default: generate when the rows have a 'target' field."
        ),
    ] = None,
    head_lr: Annotated[float | None, typer.Option(help="The head's learning rate (default: --lr).")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Head tasks: tokens per row or QA window at most (default 256 / 384).")
    ] = None,
    backbone_dropout: Annotated[
        bool,
        typer.Option(
            help="Head tasks: keep the frozen backbone's own dropout on during training steps (as P-tuning v2 "
            "does); validation and inference run without it."
        ),
    ] = False,
    method_option: Annotated[
        list[str] | None,
        typer.Option(
            "--method-option",
            "-o",
            help="A setting of the method's config, KEY=VALUE, repeatable (e.g. -o prefix_hidden=256 -o encoder=lstm).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 5,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 16,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate (AdamW, warmup, decay); "
            "default: the method's (0.01; p-tuning-v2 3e-3, prefix 5e-4)."
        ),
    ] = None,
    num_virtual_tokens: Annotated[
        int,
        typer.Option(
            help="Soft tokens at the template's [soft] slot (the built-in templates add [soft:4] before the answer)."
        ),
    ] = 16,
    init: Annotated[str, typer.Option(help="Soft-token init: labels, vocab, text, random.")] = "labels",
    init_text: Annotated[str | None, typer.Option(help="The text for --init text.")] = None,
    reparam_hidden: Annotated[
        int, typer.Option(help="Prompt tuning: train the soft tokens through a residual MLP of this width (0: off).")
    ] = 0,
    template: Annotated[
        str | None,
        typer.Option(
            help="Built-in name (classify, classify-pair), a .json template, or a string like "
            "'[soft] Review: {{ text }} Sentiment: [label]'."
        ),
    ] = None,
    verbalizer: Annotated[
        str | None,
        typer.Option(help="Label words: 'positive=great|good;negative=bad' or a .json file. Default: the labels."),
    ] = None,
    calibrate: Annotated[bool, typer.Option(help="Fit contextual calibration after training.")] = False,
    demos: Annotated[
        int, typer.Option(help="Few-shot demos from the training rows, shown before each input (cached: free per row).")
    ] = 0,
    eval_every: Annotated[int | None, typer.Option(help="Validate every K steps (default: 4 times an epoch).")] = None,
    patience: Annotated[
        int, typer.Option(help="Stop after this many validations without a strict improvement of the metric.")
    ] = 10,
    ema: Annotated[
        float,
        typer.Option(help="Validate and keep an exponential moving average of the prompt with this decay (0: off)."),
    ] = 0.9,
    average_best: Annotated[
        int,
        typer.Option(
            help="End with the mean of the K best validated (averaged) prompts, ties broken by validation loss; "
            "only those within one standard error of the best's validation value join (1: the best alone)."
        ),
    ] = 3,
    time_budget: Annotated[
        float,
        typer.Option(
            help="Seconds of training (steps + validation) at most; then validate, keep the best, stop (0: none)."
        ),
    ] = 780.0,
    sampled_labels: Annotated[
        int,
        typer.Option(
            help="Many labels of several words (over 256 later tokens in all): a training row scores its own label and "
            "others drawn at random, this many in all, in its own pass (0: every label at every step; validation "
            "always scores every label)."
        ),
    ] = 64,
    resume: Annotated[
        bool, typer.Option(help="Continue from the checkpoint in --out (with any number of processes).")
    ] = False,
    nproc: NprocOpt = 1,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an artifact already at --out (a folder holding anything else never is).")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="A pack (train-multi, continual) whose prompt this one starts from (prompt tuning)."),
    ] = None,
    source_task: Annotated[
        str | None,
        typer.Option(
            help="With --init-from: 'shared' (the pack's shared prompt, the default), a task's name, or 'mixture' "
            "(ATTEMPT: a new prompt plus an attention over the pack's frozen source prompts, per input)."
        ),
    ] = None,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, init and batch order.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a soft prompt on labelled rows and save it as an artifact."""
    if launched(nproc):  # this process only started the others (before anything heavy loads)
        return
    from prompttune.api import train_from_file
    from prompttune.cli.progress import TrainingProgress, label_list, progress_bar
    from prompttune.core.backbone import set_threads
    from prompttune.train import TrainConfig

    if num_virtual_tokens < 1:
        raise PromptTuneError(f"--num-virtual-tokens {num_virtual_tokens}: must be at least 1.")
    set_threads()
    shared = {"num_virtual_tokens": num_virtual_tokens, "init": init, "init_text": init_text}
    shared["reparam_hidden"] = reparam_hidden
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
        average_best=average_best,
        time_budget_s=time_budget if time_budget > 0 else None,
        sampled_labels=sampled_labels,
    )
    from prompttune.distributed.env import env_world, is_main_process

    main = is_main_process()  # under a launcher, rank 0 alone reports
    world = env_world()
    bar = progress_bar(err)
    progress = TrainingProgress(err, None)
    shown: set[str] = set()  # warnings printed at the start are not repeated at the end

    def started(task, info: dict) -> None:
        if not main:
            return
        labels = f"{len(info['labels'])} labels, " if info["kind"] else f"labels {label_list(info['labels'])}, "
        if info.get("max_target_tokens") is not None:  # a generation task has targets, not labels
            labels = f"generation task, targets of up to {info['max_target_tokens']} tokens, "
        what = f"{info['kind']} head: " if info["kind"] else ""
        err.print(
            f"{what}train {info['n_train']} rows, validation {info['n_val']} rows, {labels}method "
            f"{task.method_name} on {task.backbone.model_id}, {info['trainable_params']:,} trainable parameters"
            + (f", data-parallel over {world} processes" if world > 1 else ""),
            highlight=False,
        )
        for warning in info.get("warnings", ()):  # known before the first step
            warn(warning)
            shown.add(warning)
        if info["trainable_params"]:
            bar.start()
            progress.attach(bar)

    try:
        _, _, result = train_from_file(
            data,
            out_dir,
            val=val,
            limit=limit,
            head=head,
            task_type=task,
            method=method,
            method_config=method_option or [],
            shared_settings=shared,
            template=template,
            verbalizer=verbalizer,
            demos=demos,
            calibrate=calibrate,
            max_length=max_length,
            config=config,
            model=model,
            resume=resume,
            overwrite=overwrite,
            callbacks=[progress],
            on_start=started,
            init_from=init_from,
            source_task=source_task,
            **Settings.backbone_args(),
        )
    finally:
        if progress.bar is not None:  # drawn only once training started
            bar.stop()
    if not main:
        return
    for warning in (w for w in result["warnings"] if w not in shown):
        warn(warning)
    if as_json:
        emit_json(result)
    else:
        out.print(
            f"saved {result['artifact']}: best validation {result['metric']} "
            f"{result['best_val_accuracy']:.4f} "
            f"after {result['steps']} steps ({result['train_seconds']:.0f} s, "
            f"{result['train_examples_per_s']:.1f} examples/s)"
        )
        if result["averaged_val"] is not None:
            out.print(
                f"saved the mean of the states validated at steps {', '.join(map(str, result['kept_steps']))}: "
                f"validation {result['metric']} {result['averaged_val']:.4f}"
            )

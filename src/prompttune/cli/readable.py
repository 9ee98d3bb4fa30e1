"""`prompttune inspect | harden`: read a soft prompt as tokens; turn it (or a task's rows) into a hard prompt."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, Settings, emit_json, err, out

LimitOpt = Annotated[int | None, typer.Option(help="Use only the first N rows of --data (or of DATA).")]


def inspect_prompt(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="A prompt-tuning or p-tuning artifact.")],
    top: Annotated[int, typer.Option(help="Nearest vocabulary tokens shown per virtual token (1-100).")] = 5,
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled rows: accuracy of the soft prompt beside its nearest-token projection."),
    ] = None,
    limit: LimitOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per virtual token: its nearest vocabulary tokens (cosine, distance) and its norm against the vocabulary's;
    with --data, what the prompt scores when every token is replaced by its nearest neighbour."""
    from prompttune.core.backbone import set_threads
    from prompttune.readable import inspect_artifact

    set_threads()
    with err.status(f"inspecting {artifact}"):
        report = inspect_artifact(artifact, top, data, limit, model, **Settings.backbone_args())
    if as_json:
        emit_json(report)
        return
    from rich.table import Table

    v = report["vocabulary"]["norm"]
    table = Table(title=f"{report['artifact']} ({report['method']}): {report['virtual_tokens']} virtual tokens")
    for col in ("#", "slot", "norm (pct)", f"nearest tokens (cosine / distance), of {report['vocabulary']['tokens']}"):
        table.add_column(col)
    for t in report["tokens"]:
        near = "  ".join(f"{n['text']!r} {n['cosine']:.2f}/{n['distance']:.2f}" for n in t["neighbours"])
        table.add_row(str(t["position"]), str(t["slot"]), f"{t['norm']:.2f} ({t['norm_percentile']:.0f})", near)
    out.print(table)
    out.print(
        f"vocabulary norms: mean {v['mean']:.2f}, p5 {v['p5']:.2f}, median {v['p50']:.2f}, p95 {v['p95']:.2f}; "
        f"mean cosine to the nearest token {report['mean_nearest_cosine']:.3f}",
        markup=False,
        highlight=False,
    )
    for slot, text in report["nearest_text"].items():
        out.print(f"slot {slot} as nearest tokens: {text!r}", markup=False, highlight=False)
    acc = report["accuracy"]
    if acc:
        out.print(
            f"accuracy on {acc['rows']} rows: soft prompt {acc['soft']:.4f}"
            f"{' (calibrated)' if acc['soft_calibrated'] else ''}, nearest tokens {acc['nearest']:.4f}",
            markup=False,
            highlight=False,
        )


def harden_prompt(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="ARTIFACT|DATA",
            help="A prompt-tuning/p-tuning artifact, or labelled rows (.jsonl/.csv) for pez/gcg with the default "
            "template.",
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="The template file to write (.yaml).")],
    method: Annotated[
        str,
        typer.Option(
            help="nearest (project the soft prompt on tokens), pez (learn tokens by projected gradients) or gcg "
            "(greedy coordinate gradient: token swaps ranked by the gradient, tried on a batch, the best kept)."
        ),
    ] = "nearest",
    tokens: Annotated[
        int | None, typer.Option(help="pez/gcg: tokens per [soft] slot (1-64; default 8, or the artifact's).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="pez/gcg: steps (1-10,000; default pez 200, gcg 60).", show_default=False)
    ] = None,
    lr: Annotated[float | None, typer.Option(help="pez: learning rate (default 0.3 x the embeddings' std).")] = None,
    batch_size: Annotated[int, typer.Option(help="pez/gcg: rows per step (1-256).")] = 16,
    eval_every: Annotated[
        int | None,
        typer.Option(
            help="pez/gcg: score the tokens on selection rows every N steps (default pez 25, gcg 5).",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="gcg: tokens per position ranked by the gradient (1-4,096; default 32).")
    ] = None,
    candidates: Annotated[
        int | None, typer.Option(help="gcg: swaps tried on each step's batch (1-512; default 16).")
    ] = None,
    confirm: Annotated[
        bool | None,
        typer.Option(
            "--confirm",
            help="pez: a new projection replaces the tokens the model reads only if it also lowers the loss on the "
            "next batch (as gcg's swaps; off: every projection is taken, as in the paper).",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="pez/gcg start: soft (the artifact's soft prompt; its default), labels (DATA's default), vocab, or "
            "text (--init-text)."
        ),
    ] = None,
    init_text: Annotated[
        str | None,
        typer.Option(help="pez/gcg with --init text: the words it starts from (cycled to fill the slots)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="With an ARTIFACT: labelled rows (pez/gcg train on 90%, pick on 10%).")
    ] = None,
    val: Annotated[
        Path | None, typer.Option(help="Held-out labelled rows the report scores on (default: rows not trained on).")
    ] = None,
    limit: LimitOpt = None,
    template: Annotated[
        str | None, typer.Option(help="With DATA: the template (name or file) whose [soft] slots pez/gcg fill.")
    ] = None,
    vocab: Annotated[
        str,
        typer.Option(
            help="Candidate tokens: readable (printable ASCII that tokenizes back), words (of those, whole words "
            "and punctuation) or all (every non-special token)."
        ),
    ] = "readable",
    seed: Annotated[int, typer.Option(help="Seed of the split, the batches and the init.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a template harden wrote earlier at --out.")] = False,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a hard prompt (template YAML) found from a soft prompt or from rows, scored beside the soft prompt
    and the hand-written one."""
    from prompttune.cli.progress import TrainingProgress, progress_bar
    from prompttune.core.backbone import set_threads
    from prompttune.readable import harden, search_config

    config = search_config(
        method, steps=steps, lr=lr, batch_size=batch_size, eval_every=eval_every, top_k=top_k,
        candidates=candidates, confirm=confirm, seed=seed,
    )  # fmt: skip
    set_threads()
    with progress_bar(err) if config is not None else contextlib.nullcontext() as bar:
        callbacks = [TrainingProgress(err, bar)] if bar is not None else []
        if callbacks:
            bar.update(callbacks[0].task, description=method)
        report = harden(
            source,
            out_file,
            method=method,
            data=data,
            val=val,
            limit=limit,
            tokens=tokens,
            init=init,
            init_text=init_text,
            template=template,
            vocab=vocab,
            search=config,
            overwrite=overwrite,
            backbone=model,
            callbacks=callbacks,
            **Settings.backbone_args(),
        )
    acc = report["accuracy"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    for slot, text in report["text"].items():
        out.print(f"slot {slot}: {text!r}", markup=False, highlight=False)
    scored = f"on {acc['rows']} rows ({acc['rows_source']})" if acc["rows"] else "(no rows given: not scored)"
    out.print(
        f"accuracy {scored}: hardened {fmt(acc['hardened'])}, soft prompt {fmt(acc['soft'])}, "
        f"hand-written {fmt(acc['hand_written'])}"
        + (f", the search's start {fmt(acc['start'])}" if acc.get("start") is not None else "")
        + f"; wrote {report['out']}",
        markup=False,
        highlight=False,
    )
    if not report["roundtrip"]:
        err.print("note: the tokens' text tokenizes to other tokens; the figure above is the text's, as written.")
    if as_json:
        emit_json(report)

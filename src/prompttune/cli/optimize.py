"""`prompttune optimize | run`: search a program's instructions and demos; run a saved program on rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, Settings, emit_json, err, out

ProgramArg = Annotated[
    str,
    typer.Argument(
        metavar="PROGRAM",
        help="A program file (YAML/JSON listing steps), a saved program (an optimize --out folder), or a "
        "signature whose field names are the data's, e.g. 'text -> label'.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="In-process backbone (a local HF folder, a hub id, smollm2: the default); with --base-url, the "
        "model's name on the server.",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(help="An OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) instead of the in-process model."),
]
ApiKeyOpt = Annotated[str | None, typer.Option(envvar="PROMPTTUNE_API_KEY", help="The server's API key.")]
ApiModeOpt = Annotated[
    str, typer.Option(help="With --base-url: chat (/chat/completions) or completions (/completions, one text).")
]
GuidedOpt = Annotated[
    str | None,
    typer.Option(
        metavar="grammar|json",
        help="With --base-url: hold each reply to its form (labels, numbers, JSON) on the server. grammar: vLLM's "
        "guided_grammar (prompttune serve; vLLM's guidance backend); json: OpenAI's response_format with a JSON "
        "schema (OpenAI, llama.cpp, Ollama, SGLang, vLLM, prompttune serve). Not for servers that refuse unknown "
        "fields.",
        show_default=False,
    ),
]
LimitOpt = Annotated[int | None, typer.Option(help="Use only the first N rows of each data file.")]


def optimize(
    program: ProgramArg,
    train: Annotated[Path, typer.Option(help="Training rows (.jsonl/.csv): demos are bootstrapped from them.")],
    val: Annotated[Path, typer.Option(help="Validation rows (.jsonl/.csv): every candidate is scored on them.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the optimized program (program.json).")],
    metric: Annotated[str, typer.Option(help="accuracy, em, f1, or MODULE:FN (your function(row, pred)).")] = (
        "accuracy"
    ),
    optimizer: Annotated[str, typer.Option(help="bootstrap, random-search or mipro.")] = "random-search",
    max_candidates: Annotated[int, typer.Option(help="Programs scored on validation, at most (1-1000).")] = 12,
    max_model_calls: Annotated[int, typer.Option(help="Model calls of every kind, at most.")] = 5000,
    max_seconds: Annotated[float, typer.Option(help="Stop the search after this many seconds.")] = 1800.0,
    max_demos: Annotated[int, typer.Option(help="Bootstrapped demos per step, at most (0-64).")] = 4,
    max_labeled_demos: Annotated[int, typer.Option(help="Training rows as demos in the labeled set (0-64).")] = 4,
    num_instructions: Annotated[int, typer.Option(help="mipro: instructions the model proposes per step.")] = 4,
    minibatch_size: Annotated[
        int, typer.Option(help="mipro: validation rows per trial; random-search, mipro: per format screened.")
    ] = 32,
    instruction: Annotated[
        list[str] | None, typer.Option(help="mipro: a candidate instruction of yours; repeatable.")
    ] = None,
    prefix: Annotated[
        list[str] | None,
        typer.Option(
            help="random-search, mipro: a name to show a field under, FIELD=NAME (e.g. label=Sentiment); "
            "tried beside the built-in output names. Repeatable."
        ),
    ] = None,  # fmt: skip
    formats: Annotated[
        bool, typer.Option(help="random-search, mipro: screen prompt layouts and output names first.")
    ] = True,
    batch_calibration: Annotated[
        bool,
        typer.Option(
            help="random-search, mipro: try demo candidates with batch calibration (label offsets fitted on 32 "
            "training rows' inputs, saved in the program; in-process model only)."
        ),
    ] = True,
    ensemble: Annotated[
        int,
        typer.Option(
            help="Above 1: after the search, the N best candidates as one ensemble (label scores averaged, one "
            "pass per member per row), kept where it scores above the best alone (2-8)."
        ),
    ] = 1,
    ensemble_select: Annotated[
        str,
        typer.Option(
            help="With --ensemble: greedy (add the candidate that lifts validation most, while one does) or top "
            "(the N best averaged; fits the validation rows less)."
        ),
    ] = "greedy",
    seed: Annotated[int, typer.Option(help="Seed of every random choice in the search.")] = 0,
    limit: LimitOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a program saved earlier at --out.")] = False,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    api_mode: ApiModeOpt = "chat",
    guided: GuidedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Optimize a program's instructions and demos against a metric; save it as readable JSON."""
    from prompttune.programs.run import make_lm, optimize_files
    from prompttune.programs.search import SearchConfig

    config = SearchConfig(
        max_candidates=max_candidates,
        max_model_calls=max_model_calls,
        max_seconds=max_seconds,
        max_demos=max_demos,
        max_labeled_demos=max_labeled_demos,
        num_instructions=num_instructions,
        minibatch_size=minibatch_size,
        seed=seed,
        formats=formats,
        ensemble=ensemble,
        ensemble_select=ensemble_select,
        batch_calibration=batch_calibration,
    )

    def progress(entry: dict, best: float) -> None:
        rows = f" on {entry['rows']} rows" if "rows" in entry else ""
        err.print(
            f"candidate {entry['candidate']} ({entry['kind']}): {entry['val_score']:.3f}{rows}; best {best:.3f}",
            markup=False,
            highlight=False,
        )

    def lm():  # loaded once the flags, files and program have been checked
        return make_lm(model, base_url, api_key, api_mode, guided=guided, **Settings.backbone_args())

    extra = tuple(instruction or ())
    summary = optimize_files(
        program, train, val, metric, optimizer, out_dir, lm, config, overwrite, limit, extra, progress,
        prefixes=tuple(prefix or ()),
    )  # fmt: skip
    if summary["stopped"]:
        err.print(f"the search stopped at {summary['stopped']}; the best candidate fully scored is saved.")
    out.print(
        f"{optimizer}: validation {metric} {summary['baseline_val_score']:.3f} as given -> "
        f"{summary['best_val_score']:.3f} ({summary['candidates_evaluated']} candidates, "
        f"{summary['model_calls']} model calls, {summary['seconds']:.1f} s); saved {summary['out']}",
        markup=False,
        highlight=False,
    )
    if as_json:
        emit_json({k: v for k, v in summary.items() if k != "history"})


def run(
    program: ProgramArg,
    data: Annotated[Path, typer.Argument(help="Rows (.jsonl/.csv); scored when they hold the program's outputs.")],
    metric: Annotated[
        str | None, typer.Option(help="accuracy, em, f1 or MODULE:FN (default: the one it was optimized for).")
    ] = None,
    limit: LimitOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    api_mode: ApiModeOpt = "chat",
    guided: GuidedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a program (saved by optimize, a program file or a signature) over rows: outputs and score."""
    from prompttune.programs.run import make_lm, run_file

    def lm():
        return make_lm(model, base_url, api_key, api_mode, guided=guided, **Settings.backbone_args())

    report = run_file(program, data, lm, metric, limit)
    if not as_json:
        for row in report["outputs"]:
            out.print("(unparsed)" if row is None else "\t".join(str(v) for v in row.values()), markup=False)
    if report["score"] is not None:
        err.print(f"{report['metric']}: {report['score']:.4f} on {report['rows']} rows ({report['unparsed']} unparsed)")
    if as_json:
        emit_json(report)

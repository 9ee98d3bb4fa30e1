"""`prompttune eval | predict | generate | models`: use a prompt (each command one library call)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, Settings, emit_json, err, out
from prompttune.core.errors import PromptTuneError

NumBeamsOpt = Annotated[int, typer.Option(help="Beam search with N beams (1: greedy, or sampling with --temperature).")]
BeamsOpt = Annotated[int | None, typer.Option("--num-beams", help="A generation artifact: beam search with N beams.")]
PenaltyOpt = Annotated[
    float | None,
    typer.Option("--length-penalty", help="With --num-beams: a text scores sum(log p) / tokens ** this (default 1)."),
]
DraftOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-tokens",
        help="A generation artifact, greedy: check up to N tokens drafted from n-grams already seen (the input, "
        "the text written) in each step's pass (prompt-lookup decoding: same text, fewer passes; 0-8).",
    ),
]
LengthPenaltyOpt = Annotated[
    float,
    typer.Option(help="Beam search: a text scores sum(log p) / tokens ** this (1: mean per token; 0: the sum)."),
]


def evaluate(
    prompt: Annotated[
        str,
        typer.Argument(
            metavar="PROMPT",
            help="An artifact directory, a registry reference (name@production, name@v3, name@<hash>), "
            "a template file (.yaml/.json) or a built-in template name (see `prompttune templates list`).",
        ),
    ],
    data: Annotated[Path, typer.Argument(help="Labelled rows (.jsonl or .csv).")],
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 32,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows of DATA.")] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Artifact: apply its calibration, if it has one (default on). Hard prompt: --calibrate always "
            "applies contextual calibration, --no-calibrate never; by default (auto) it is applied only if it "
            "raises accuracy on check rows: --calibration-rows, else --demos-from rows not shown as demos, else a "
            "seeded 20% (20-100 rows) of DATA, left out of the reported figures. The report names the rows.",
        ),
    ] = None,
    calibration_rows: Annotated[
        Path | None,
        typer.Option(
            help="Hard prompt: labelled rows (.jsonl/.csv, at least 20; a seeded 100 are used) on which the "
            "default (auto) calibration is checked, so every row of DATA is reported on."
        ),
    ] = None,
    demos: Annotated[int, typer.Option(help="Hard prompt: few-shot demos shown before each input.")] = 0,
    demo_selector: Annotated[
        str, typer.Option(help="Hard prompt: fixed (first rows), random (seeded) or knn (nearest by MiniLM).")
    ] = "random",
    demos_from: Annotated[Path | None, typer.Option(help="Hard prompt: labelled rows to draw demos from.")] = None,
    verbalizer: Annotated[
        str | None, typer.Option(help="Hard prompt: label words, as for train. Default: the labels.")
    ] = None,
    db: Annotated[str | None, typer.Option(help="Registry database (path or URL) for a registry reference.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for random demos and the calibration check rows.")] = 0,
    task_name: Annotated[
        str | None, typer.Option("--task", help="A pack (train-multi, continual): the task to evaluate, by name.")
    ] = None,
    num_beams: BeamsOpt = None,
    length_penalty: PenaltyOpt = None,
    draft_tokens: DraftOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, per-class precision/recall/F1 and speed of a soft or hard prompt on labelled rows."""
    from prompttune.api import evaluate as evaluate_prompt
    from prompttune.cli.progress import progress_bar
    from prompttune.cli.reports import show_report, show_warnings
    from prompttune.core.backbone import set_threads

    set_threads()
    with progress_bar(err) as bar:
        task = bar.add_task("evaluating", total=None, info="")
        report = evaluate_prompt(
            prompt,
            data,
            batch_size=batch_size,
            limit=limit,
            calibrate=calibrate,
            demos=demos,
            demo_selector=demo_selector,
            demos_from=demos_from,
            verbalizer=verbalizer,
            calibration_rows=calibration_rows,
            db=db,
            seed=seed,
            model=model,
            progress=lambda n: bar.advance(task, n),
            task_name=task_name,
            decoding=_decoding(num_beams, length_penalty, draft_tokens),
            **Settings.backbone_args(),
        )
    show_warnings(err, report)
    if as_json:
        emit_json(report)
    else:
        show_report(out, report)


def predict(
    artifact_dir: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to label.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A .jsonl/.csv file of rows to label.")] = None,
    task_name: Annotated[
        str | None, typer.Option("--task", help="A pack (train-multi, continual): the task to predict with.")
    ] = None,
    num_beams: BeamsOpt = None,
    length_penalty: PenaltyOpt = None,
    draft_tokens: DraftOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts (arguments) or a file's rows, with per-label probabilities (heads: tags/entities, answers)."""
    from prompttune.api import predict as predict_rows
    from prompttune.cli.reports import format_prediction
    from prompttune.core.backbone import set_threads

    if not texts and not file:
        raise PromptTuneError("predict: give texts as arguments or --file rows.jsonl.")
    set_threads()
    decoding = _decoding(num_beams, length_penalty, draft_tokens)
    rows = predict_rows(
        artifact_dir, file or texts, model, task_name=task_name, decoding=decoding, **Settings.backbone_args()
    )
    for r in rows:
        if as_json:
            emit_json(r)
        else:
            out.print(format_prediction(r), markup=False, highlight=False, soft_wrap=True)


def _decoding(num_beams: int | None, length_penalty: float | None, draft_tokens: int | None) -> dict | None:
    """--num-beams / --length-penalty / --draft-tokens as a generation artifact's decoding changes (None: the
    artifact's own)."""
    given = (("num_beams", num_beams), ("length_penalty", length_penalty), ("draft_tokens", draft_tokens))
    changes = {k: v for k, v in given if v is not None}
    return changes or None


def generate(
    text: Annotated[str, typer.Argument(help="The input text (the template's text field).")],
    artifact_dir: Annotated[Path | None, typer.Option("--artifact", help="Use this artifact's prompt.")] = None,
    system: Annotated[
        str, typer.Option(help="System text when no artifact is given.")
    ] = "You are a helpful assistant.",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Sampling: keep the most likely tokens up to this mass.")] = 1.0,
    repetition_penalty: Annotated[
        float, typer.Option(help="Divide the scores of tokens already generated by this (1: off).")
    ] = 1.1,
    no_repeat_ngram_size: Annotated[int, typer.Option(help="Never generate the same N-gram twice (0: off).")] = 4,
    stop: Annotated[list[str] | None, typer.Option(help="End before this text; repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    num_beams: NumBeamsOpt = 1,
    length_penalty: LengthPenaltyOpt = 1.0,
    json_schema: Annotated[
        Path | None,
        typer.Option(
            help='Hold the text to JSON valid under the schema in this file ({"type": "object"}: any object).'
        ),
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Generate free text, with an artifact's prompt or a plain chat prompt."""
    from prompttune.api import generate as generate_text
    from prompttune.core.backbone import set_threads
    from prompttune.core.generate import GenerationConfig
    from prompttune.structured import grammar_from_file

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop or ()),
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        num_beams=num_beams,
        length_penalty=length_penalty,
        grammar=grammar_from_file(json_schema) if json_schema is not None else None,
    )
    set_threads()
    text_out = generate_text(text, artifact_dir, system, config, model, **Settings.backbone_args())
    out.print(text_out, markup=False, highlight=False)  # model text: brackets are text, not rich markup


def models() -> None:
    """Show the embedded default models and prepare their cache (dequantizes the decoder once)."""
    from rich.table import Table

    from prompttune.core import defaults

    table = Table("alias", "model", "where")
    for name in (defaults.DEFAULT_DECODER, defaults.DEFAULT_ENCODER):
        try:
            _, where = defaults.resolve(name)
        except PromptTuneError as e:
            where = f"[red]{e}[/]"
        table.add_row(", ".join(a for a, n in defaults.ALIASES.items() if n == name), name, str(where))
    out.print(table)
    out.print(f"cache: {defaults.cache_dir()}  (set PROMPTTUNE_CACHE to move it)")

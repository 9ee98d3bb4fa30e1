"""The command line: a map of command names to typed functions (flags and --help come from them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .errors import PromptTuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Adapt a frozen language model to your task through prompts.",
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="Backbone: a local HF folder, a hub id, or smollm2 (default decoder) / minilm (encoder)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]


@app.callback()
def _options(
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Backbone precision: auto (bfloat16 where the CPU has native bf16), float32, bfloat16."
        ),
    ] = None,
) -> None:
    import os

    if dtype:
        os.environ["PROMPTTUNE_DTYPE"] = dtype


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="Training rows (.jsonl or .csv): text + label, or text_a + text_b + label.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")] = Path("runs/prompt"),
    val: Annotated[Path | None, typer.Option(help="Validation rows; default: a seeded 10% of DATA.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows of DATA.")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="Method: prompt-tuning, p-tuning, prefix-tuning, p-tuning-v2, or zero-shot (hard prompt only)."
        ),
    ] = "prompt-tuning",
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
            help="Peak learning rate (AdamW, warmup then linear decay); default: the method's (0.01, prefix 0.003)."
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
    patience: Annotated[int, typer.Option(help="Stop after this many validations without improvement.")] = 4,
    ema: Annotated[
        float,
        typer.Option(help="Validate and keep an exponential moving average of the prompt with this decay (0: off)."),
    ] = 0.9,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, init and batch order.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a soft prompt on labelled rows and save it as an artifact."""
    params = dict(locals())
    from .commands import run_train

    result = run_train(**params, console=err)
    if as_json:
        _emit_json(result)
    else:
        out.print(
            f"saved {result['artifact']}: best validation accuracy {result['best_val_accuracy']:.4f} "
            f"after {result['steps']} steps ({result['train_seconds']:.0f} s, "
            f"{result['train_examples_per_s']:.1f} examples/s)"
        )


@app.command("eval")
def evaluate(
    artifact_dir: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory.")],
    data: Annotated[Path, typer.Argument(help="Labelled rows (.jsonl or .csv).")],
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 32,
    calibrate: Annotated[bool, typer.Option(help="Apply the artifact's calibration, if it has one.")] = True,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, per-class precision/recall/F1 and speed of an artifact on labelled rows."""
    from .commands import run_eval, show_report

    report = run_eval(artifact_dir, data, batch_size, calibrate, model, err)
    if as_json:
        _emit_json(report)
    else:
        show_report(out, report)


@app.command()
def predict(
    artifact_dir: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to label.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A .jsonl/.csv file of rows to label.")] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts (arguments) or a file's rows, with per-label probabilities."""
    from .commands import run_predict

    rows = run_predict(artifact_dir, texts, file, model)
    for r in rows:
        if as_json:
            _emit_json(r)
        else:
            scores = "  ".join(f"{k}={v:.3f}" for k, v in r["scores"].items())
            out.print(f"{r['label']:<12} {scores}  | {r['input'][:70]}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def generate(
    text: Annotated[str, typer.Argument(help="The input text (the template's text field).")],
    artifact_dir: Annotated[Path | None, typer.Option("--artifact", help="Use this artifact's prompt.")] = None,
    system: Annotated[
        str, typer.Option(help="System text when no artifact is given.")
    ] = "You are a helpful assistant.",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    model: ModelOpt = None,
) -> None:
    """Generate free text, with an artifact's prompt or a plain chat prompt."""
    from .commands import run_generate

    out.print(run_generate(text, artifact_dir, system, max_new_tokens, temperature, seed, model))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to save the demo artifact.")] = Path("runs/demo"),
    max_steps: Annotated[int | None, typer.Option(help="Cap the training steps (default: the recipe's).")] = None,
    model: ModelOpt = None,
) -> None:
    """Train a soft prompt on a small shipped sentiment task; show zero-shot vs tuned accuracy."""
    from .demo import run_demo

    run_demo(out_dir, max_steps, model, out, err)


@app.command()
def models() -> None:
    """Show the embedded default models and prepare their cache (dequantizes the decoder once)."""
    from .commands import run_models

    run_models(out)


# PEFT interop (bodies in peft_interop.py).
@app.command("export")
def export(
    artifact_dir: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory.")],
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="The adapter directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Output format: peft (adapter_config.json + safetensors).")],
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a soft prompt for another library: --format peft writes an adapter PeftModel.from_pretrained loads."""
    from .peft_interop import export_peft

    if fmt != "peft":
        raise PromptTuneError(f"--format {fmt}: unknown; the one format is peft.")
    result = export_peft(artifact_dir, out_dir, model)
    if as_json:
        _emit_json(result)
    else:
        out.print(
            f"wrote {result['adapter']}: PEFT {result['peft_type']}, {result['num_virtual_tokens']} virtual tokens"
        )


@app.command("import")
def import_adapter(
    adapter_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A PEFT prompt-learning adapter directory.")],
    labels: Annotated[str, typer.Option(help="The labels, comma-separated, e.g. negative,positive.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    template: Annotated[
        str | None,
        typer.Option(help="The prompt the adapter was trained with; default '[soft]{{ text }} [label]'."),
    ] = None,
    verbalizer: Annotated[str | None, typer.Option(help="Label words, as for train.")] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a PEFT PROMPT_TUNING, P_TUNING or PREFIX_TUNING adapter into an artifact."""
    from .peft_interop import import_peft

    result = import_peft(adapter_dir, labels.split(","), out_dir, template, verbalizer, model)
    if as_json:
        _emit_json(result)
    else:
        out.print(f"saved {result['artifact']}: {result['method']} from PEFT {result['peft_type']}")


def main() -> None:
    try:
        app()
    except PromptTuneError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted; rerun with --resume to continue training from the last checkpoint.")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

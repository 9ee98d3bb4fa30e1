"""The command line: a map of command names to typed functions (flags and --help come from them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from prompttune.cli.options import JsonOpt, ModelOpt, emit_json, err, out
from prompttune.core.errors import PromptTuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Adapt a frozen language model to your task through prompts.",
)


@app.callback()
def _options(
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Backbone precision: auto (bfloat16 where the CPU has native bf16), float32, bfloat16."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Where the backbone runs: cpu (default), cuda, cuda:N, or auto (a GPU if there is one). "
            "Head tasks (--head) train and evaluate on a GPU; verbalizer tasks run on the CPU.",
        ),
    ] = None,
) -> None:
    import os

    if dtype:
        os.environ["PROMPTTUNE_DTYPE"] = dtype
    if device:
        os.environ["PROMPTTUNE_DEVICE"] = device


@app.command()
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
            help="Read out with a trained head instead of a verbalizer: classification, tokens (tagging, IOB2) or "
            "span (extractive QA). Default: tokens / span when the data has their fields. Default model: minilm."
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
    from prompttune.cli.commands import run_train

    result = run_train(**params, console=err)
    if as_json:
        emit_json(result)
    else:
        out.print(
            f"saved {result['artifact']}: best validation {result.get('metric', 'accuracy')} "
            f"{result['best_val_accuracy']:.4f} "
            f"after {result['steps']} steps ({result['train_seconds']:.0f} s, "
            f"{result['train_examples_per_s']:.1f} examples/s)"
        )


@app.command("eval")
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
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Artifact: apply its calibration, if it has one (default on). "
            "Hard prompt: fit contextual calibration first (default off).",
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
    seed: Annotated[int, typer.Option(help="Seed for random demos.")] = 0,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, per-class precision/recall/F1 and speed of a soft or hard prompt on labelled rows."""
    from prompttune.cli.commands import show_report
    from prompttune.hard.evaluate import run_any_eval

    report = run_any_eval(
        prompt, data, batch_size, calibrate, model, err, demos, demo_selector, demos_from, verbalizer, db, seed
    )
    if as_json:
        emit_json(report)
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
    """Label texts (arguments) or a file's rows, with per-label probabilities (heads: tags/entities, answers)."""
    from prompttune.cli.commands import run_predict
    from prompttune.cli.head_commands import format_head_prediction

    rows = run_predict(artifact_dir, texts, file, model)
    for r in rows:
        if as_json:
            emit_json(r)
        else:
            out.print(format_head_prediction(r), markup=False, highlight=False, soft_wrap=True)


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
    from prompttune.cli.commands import run_generate

    out.print(run_generate(text, artifact_dir, system, max_new_tokens, temperature, seed, model))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to save the demo artifact.")] = Path("runs/demo"),
    max_steps: Annotated[int | None, typer.Option(help="Cap the training steps (default: the recipe's).")] = None,
    model: ModelOpt = None,
) -> None:
    """Train a soft prompt on a small shipped sentiment task; show zero-shot vs tuned accuracy."""
    from prompttune.cli.demo import run_demo

    run_demo(out_dir, max_steps, model, out, err)


@app.command()
def models() -> None:
    """Show the embedded default models and prepare their cache (dequantizes the decoder once)."""
    from prompttune.cli.commands import run_models

    run_models(out)


@app.command()
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
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank hard prompts, soft prompts, LoRA and full fine-tuning on the same data, with cost."""
    import os

    from prompttune.compare import run_compare

    try:
        result = run_compare(
            data, out_dir, methods, method_option, seeds, train_sizes, test, val, limit, val_rows, max_steps,
            batch_size, template=template, verbalizer=verbalizer, reference=reference, model=model,
            dtype=os.environ.get("PROMPTTUNE_DTYPE"), isolate=isolate, console=err,
        )  # fmt: skip
    except KeyboardInterrupt:
        err.print(f"interrupted; finished runs are kept in {out_dir}: rerun the same command to resume.")
        raise SystemExit(130) from None
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "summary"} | {"methods": result["summary"]["methods"]})
    else:
        out.print((Path(result["reports"]["md"])).read_text(), markup=False, highlight=False)
        out.print(f"reports: {', '.join(result['reports'].values())}", highlight=False)


# Retrieval and agents (commands in rag_cli.py).
from prompttune.cli.rag import agent, rag_app  # noqa: E402

app.add_typer(rag_app, name="rag")
app.command()(agent)


# Hard prompts: built-in templates, the prompt registry and chains (bodies in prompt_cli.py).
from prompttune.cli.prompts import chain_app, registry_app, templates_app  # noqa: E402

app.add_typer(templates_app, name="templates")
app.add_typer(registry_app, name="registry")
app.add_typer(chain_app, name="chain")


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
    from prompttune.interop.peft import export_peft

    if fmt != "peft":
        raise PromptTuneError(f"--format {fmt}: unknown; the one format is peft.")
    result = export_peft(artifact_dir, out_dir, model)
    if as_json:
        emit_json(result)
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
    from prompttune.interop.peft import import_peft

    result = import_peft(adapter_dir, labels.split(","), out_dir, template, verbalizer, model)
    if as_json:
        emit_json(result)
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

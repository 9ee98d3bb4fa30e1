"""The command line: a map of command names to typed functions (flags and --help come from them)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from prompttune.cli.options import Settings, err
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
            "Every task (label words, heads, generation) trains and evaluates there.",
        ),
    ] = None,
) -> None:
    Settings.dtype, Settings.device = dtype, device  # handed to every backbone a command loads


# Commands are plain typed functions in their own modules; registered here in the order --help lists them.
from prompttune.cli.compare import compare  # noqa: E402
from prompttune.cli.demo import demo  # noqa: E402
from prompttune.cli.interop import export, import_adapter  # noqa: E402
from prompttune.cli.multitask import continual, train_multi  # noqa: E402
from prompttune.cli.optimize import optimize, run  # noqa: E402
from prompttune.cli.prompts import chain_app, registry_app, templates_app  # noqa: E402
from prompttune.cli.rag import agent, rag_app  # noqa: E402
from prompttune.cli.readable import harden_prompt, inspect_prompt  # noqa: E402
from prompttune.cli.serve import serve  # noqa: E402
from prompttune.cli.train import train  # noqa: E402
from prompttune.cli.use import evaluate, generate, models, predict  # noqa: E402

app.command()(train)
app.command("train-multi")(train_multi)
app.command()(continual)
app.command("eval")(evaluate)
app.command()(predict)
app.command()(generate)
app.command()(demo)
app.command()(models)
app.command()(compare)
app.add_typer(rag_app, name="rag")
app.command()(agent)
app.add_typer(templates_app, name="templates")
app.add_typer(registry_app, name="registry")
app.add_typer(chain_app, name="chain")
app.command("export")(export)
app.command("import")(import_adapter)
app.command()(serve)
app.command()(optimize)
app.command()(run)
app.command("inspect")(inspect_prompt)
app.command("harden")(harden_prompt)


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

"""`prompttune export | import`: soft prompts to and from PEFT adapters (bodies in ``prompttune.interop.peft``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import JsonOpt, ModelOpt, emit_json, out
from prompttune.core.errors import PromptTuneError


def export(
    artifact_dir: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="An artifact directory.")],
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="The adapter directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Output format: peft (adapter_config.json + safetensors).")],
    model: ModelOpt = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an adapter already in DIR (a folder holding anything else never is).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a soft prompt for another library: --format peft writes an adapter PeftModel.from_pretrained loads."""
    from prompttune.interop.peft import export_peft

    if fmt != "peft":
        raise PromptTuneError(f"--format {fmt}: unknown; the one format is peft.")
    result = export_peft(artifact_dir, out_dir, model, overwrite)
    if as_json:
        emit_json(result)
    else:
        out.print(
            f"wrote {result['adapter']}: PEFT {result['peft_type']}, {result['num_virtual_tokens']} virtual tokens"
        )


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
    overwrite: Annotated[
        bool, typer.Option(help="Replace an artifact already at --out (a folder holding anything else never is).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Read a PEFT PROMPT_TUNING, P_TUNING or PREFIX_TUNING adapter into an artifact."""
    from prompttune.interop.peft import import_peft

    result = import_peft(adapter_dir, labels.split(","), out_dir, template, verbalizer, model, overwrite)
    if as_json:
        emit_json(result)
    else:
        out.print(f"saved {result['artifact']}: {result['method']} from PEFT {result['peft_type']}")
